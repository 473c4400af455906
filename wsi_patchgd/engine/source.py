"""Where the engine reads patches: the :class:`PatchSource` protocol and an in-memory source.

A source gives each image's :class:`~wsi_patchgd.sampling.PatchGrid` and reads uint8 patches by
flat index. Optional extras the engine uses when a source has them: ``storage_order(image,
indices)`` (the order to read in, e.g. shard by shard) and ``prefetch(requests)`` (the reads that
follow, see :func:`announce`). The store-backed source is
:class:`~wsi_patchgd.data.StorePatchSource`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.sampling import PatchGrid

__all__ = ["PatchSource", "TensorPatchSource", "announce", "read_patches"]


@runtime_checkable
class PatchSource(Protocol):
    """What the engine reads patches through (a store-backed loader, a TensorPatchSource)."""

    def grid(self, image: int) -> PatchGrid:
        """The patch grid of image ``image``."""
        ...

    def read(self, image: int, indices: np.ndarray) -> Tensor:
        """uint8 patches ``(m, 3, P, P)`` of image ``image``, in the order of ``indices``."""
        ...


class TensorPatchSource:
    """A :class:`PatchSource` over in-memory uint8 images (tests, small data).

    Args:
        images: uint8 tensors ``(3, H, W)``; the last row/column of patches is padded with 255
            (white slide background) to whole patches.
        patch_size: Patch side P.
        tissue: Optional bool masks ``(n_h, n_w)`` per image; default: every patch is tissue.

    Raises:
        ConfigError: If an image is not uint8 ``(3, H, W)`` or a mask has the wrong shape.
    """

    def __init__(
        self, images: Sequence[Tensor], patch_size: int, tissue: Sequence[np.ndarray] | None = None
    ) -> None:
        if tissue is not None and len(tissue) != len(images):
            raise ConfigError(f"got {len(tissue)} tissue masks for {len(images)} images")
        self.patch_size = int(patch_size)
        self._patches: list[Tensor] = []
        self._grids: list[PatchGrid] = []
        p = self.patch_size
        for i, image in enumerate(images):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ConfigError(
                    f"image {i} must be a uint8 (3, H, W) tensor, got {image.dtype} "
                    f"{tuple(image.shape)}"
                )
            n_h, n_w = -(-image.shape[1] // p), -(-image.shape[2] // p)
            pad = (0, n_w * p - image.shape[2], 0, n_h * p - image.shape[1])
            padded = F.pad(image, pad, value=255)
            patches = padded.unfold(1, p, p).unfold(2, p, p).permute(1, 2, 0, 3, 4)
            self._patches.append(patches.reshape(n_h * n_w, 3, p, p).contiguous())
            mask = np.ones((n_h, n_w), dtype=bool) if tissue is None else np.asarray(tissue[i])
            if mask.shape != (n_h, n_w):
                raise ConfigError(
                    f"tissue mask {i} has shape {mask.shape}, expected {(n_h, n_w)} for a "
                    f"{tuple(image.shape[1:])} image with patch_size {p}"
                )
            self._grids.append(PatchGrid(patch_size=p, tissue=mask))

    def __len__(self) -> int:
        return len(self._grids)

    def grid(self, image: int) -> PatchGrid:
        """See :class:`PatchSource`."""
        return self._grids[image]

    def read(self, image: int, indices: np.ndarray) -> Tensor:
        """See :class:`PatchSource`."""
        return self._patches[image][torch.as_tensor(np.asarray(indices, dtype=np.int64))]


def read_patches(source: PatchSource, requests: Sequence[tuple[int, np.ndarray]]) -> Tensor:
    """The patches of ``(image, indices)`` requests, concatenated in request order."""
    return torch.cat([source.read(image, idx) for image, idx in requests])


def announce(source: PatchSource, requests: Sequence[tuple[int, np.ndarray]]) -> None:
    """Tell a prefetching source (one with ``prefetch``) which reads follow, in order."""
    prefetch = getattr(source, "prefetch", None)
    if prefetch is not None and requests:
        prefetch(requests)
