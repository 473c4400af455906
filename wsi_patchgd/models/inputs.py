"""Backbone input: uint8 pixels to the normalised float tensor a torchvision model expects.

Both models (PatchGD's patches and the GD baseline's resized images) and any script that feeds
a backbone directly go through :class:`InputNorm`, so every path normalises the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputNorm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNorm(nn.Module):
    """``x / 255``, then per channel ``(x - mean) / std``: pixels in ``[0, 255]`` to model input.

    Args:
        mean: Per-channel mean of ``[0, 1]`` inputs (ImageNet by default).
        std: Per-channel standard deviation.

    The buffers are not persistent (state dicts do not hold them) and follow the module's dtype
    and device: ``model.double()`` makes the output float64.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x (N, 3, H, W)`` (uint8, or float on the 0-255 scale).

        Returns:
            ``x`` in the buffers' dtype and on their device, ``/ 255``, mean/std normalised.
        """
        x = x.to(device=self.mean.device, dtype=self.mean.dtype, non_blocking=True)
        return (x / 255.0 - self.mean) / self.std
