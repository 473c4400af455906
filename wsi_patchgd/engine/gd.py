"""The standard gradient-descent baseline: the whole image, resized, through one network.

:class:`GDModel` resizes each image (bilinear, antialiased) to ``image_size``, runs the same
torchvision backbone's spatial feature extractor (:func:`~wsi_patchgd.models.build_feature_map`),
projects the map to D channels with a 1x1 convolution and applies the same
:class:`~wsi_patchgd.models.PooledHead` as PatchGD. :func:`gd_train_batch` and
:func:`gd_predict` mirror :func:`~wsi_patchgd.engine.patchgd.train_batch` and
:func:`~wsi_patchgd.engine.patchgd.predict`, reading images through the same
:class:`~wsi_patchgd.engine.patchgd.PatchSource`.

The baseline holds each image of the level it reads in memory (it is read patch by patch and
stitched, then resized): point it at a level that fits, as a GD baseline on gigapixel images
must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_patchgd.engine.patchgd import LossFn, PatchSource, maybe_autocast
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_feature_map
from wsi_patchgd.models.heads import PooledHead
from wsi_patchgd.models.norm import (
    batchnorm_to_groupnorm,
    check_policy,
    phase_mode,
    refresh_statistics,
)

__all__ = ["GDModel", "GDStepResult", "gd_predict", "gd_train_batch", "load_image"]


def load_image(source: PatchSource, image: int) -> Tensor:
    """The whole image of ``source`` as uint8 ``(3, n_h * P, n_w * P)``, background included."""
    grid = source.grid(image)
    p = grid.patch_size
    patches = source.read(image, np.arange(grid.n_patches, dtype=np.int64))
    tiles = patches.reshape(grid.n_h, grid.n_w, 3, p, p).permute(2, 0, 3, 1, 4)
    return tiles.reshape(3, grid.n_h * p, grid.n_w * p)


class GDModel(nn.Module):
    """Whole-image model: resize -> backbone feature map -> 1x1 conv to D -> PooledHead.

    Args:
        backbone_name: torchvision model name.
        num_classes: Number of classes C.
        image_size: Side (or ``(height, width)``) every image is resized to.
        out_dim: Width D of the projected feature map (the head's input, as in PatchGD).
        weights: Backbone weights, as in :func:`~wsi_patchgd.models.build_backbone`.
        head_channels: Width of the head's convolutions.
        n_convs: Number of head convolutions.
        dropout: Head ``Dropout2d`` probability.
        mean: Per-channel mean of ``[0, 1]`` inputs.
        std: Per-channel standard deviation.
        norm: The PatchGD run's normalisation policy, for a like-for-like baseline: ``batch``
            is standard BatchNorm (train mode in training, running statistics at evaluation);
            ``frozen`` runs the feature extractor on running statistics in training too, after
            refreshing them from each batch's images (as PatchGD refreshes them from each
            batch's patches); ``group`` replaces the BatchNorm layers by GroupNorm.

    Raises:
        ConfigError: Unknown backbone, bad weights, or a non-positive size.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        image_size: int | tuple[int, int],
        out_dim: int = 256,
        weights: str | None = None,
        head_channels: int = 256,
        n_convs: int = 4,
        dropout: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.norm = check_policy(norm)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"image_size={image_size} must be a positive int or (h, w)")
        self.image_size = (int(size[0]), int(size[1]))
        self.features = build_feature_map(backbone_name, weights)
        if self.norm == "group":
            batchnorm_to_groupnorm(self.features)
        self.proj = nn.Conv2d(self.features.channels, out_dim, kernel_size=1)
        self.head = PooledHead(out_dim, num_classes, head_channels, n_convs, dropout)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.mean.device

    def prepare(self, images: Sequence[Tensor]) -> Tensor:
        """uint8 ``(3, H, W)`` images of any sizes -> normalised ``(B, 3, *image_size)``."""
        out = []
        for image in images:
            x = image.to(device=self.device, dtype=self.mean.dtype)[None]
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )
            out.append(x)
        return (torch.cat(out) / 255.0 - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of normalised images ``(B, 3, H, W)``."""
        return self.head(self.proj(self.features(x)), None)


def _unwrap(model: nn.Module) -> GDModel:
    """The :class:`GDModel` itself, or the one a DDP-style wrapper holds as ``.module``."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, GDModel):
        raise TypeError(f"expected a GDModel, got {type(inner).__name__}")
    return inner


class GDStepResult(TypedDict):
    """What :func:`gd_train_batch` returns.

    Keys:
        loss: Mean over the batch's images of the loss (weighted by micro-batch size).
        losses: Loss of each micro-batch.
        logits: One detached ``(B, C)`` tensor, every image of the batch (the same shape of
            result as PatchGD's per-iteration logits, so accuracy code is shared).
        optimizer_steps: Number of ``optimizer.step()`` calls.
        grad_forward_calls: Forward passes with gradient (one per micro-batch).
    """

    loss: float
    losses: list[float]
    logits: list[Tensor]
    optimizer_steps: int
    grad_forward_calls: int
    lrs: list[float]


def gd_train_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    source: PatchSource,
    images: Sequence[int],
    labels: Tensor,
    loss_fn: LossFn,
    epsilon: int = 1,
    micro_batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> GDStepResult:
    """One GD batch, split in micro-batches with gradient accumulation.

    The images are cut into micro-batches of ``micro_batch_size`` (default: one micro-batch);
    the optimizer steps every ``epsilon`` micro-batches and after the last. Each micro-batch's
    (mean-reduced) loss is weighted by its share of the images of its accumulation group, so
    one step's gradient is that of the mean loss over the group: accumulation changes memory,
    not the optimisation.

    Args:
        model: The :class:`GDModel` (or a ``DistributedDataParallel`` wrapping one); put in
            train mode here.
        optimizer: As in PatchGD's ``train_batch`` (``None``: gradients stay in ``.grad``).
        source: Where images are read.
        images: Image ids of the batch.
        labels: ``(B,)`` targets.
        loss_fn: ``loss_fn(logits, labels) -> scalar`` (mean reduction).
        epsilon: Micro-batches per optimizer step.
        micro_batch_size: Images per forward pass.
        autocast_dtype: Optional autocast dtype.
        scheduler: Learning-rate scheduler stepped after every optimizer step.

    Returns:
        The :class:`GDStepResult`.

    Raises:
        ConfigError: If ``epsilon`` or ``micro_batch_size`` is below 1 or labels do not match.
    """
    size = micro_batch_size or len(images)
    if epsilon < 1 or size < 1:
        raise ConfigError(f"epsilon={epsilon} and micro_batch_size={size} must be >= 1")
    if labels.shape[0] != len(images):
        raise ConfigError(f"got {labels.shape[0]} labels for {len(images)} images")
    net = _unwrap(model)
    model.train()
    labels = labels.to(net.device)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    starts = list(range(0, len(images), size))
    groups = [starts[i : i + epsilon] for i in range(0, len(starts), epsilon)]
    result = GDStepResult(
        loss=0.0, losses=[], logits=[], optimizer_steps=0, grad_forward_calls=0, lrs=[]
    )
    all_logits = []
    for group in groups:
        group_images = sum(min(size, len(images) - s) for s in group)
        for s in group:
            ids = images[s : s + size]
            x = net.prepare([load_image(source, i) for i in ids])
            with (
                maybe_autocast(net.device, autocast_dtype),
                phase_mode(net.features, net.norm, True),
            ):
                if net.norm == "frozen" and x.shape[0] >= 2:
                    refresh_statistics(net.features, x)
                logits = model(x)
            if autocast_dtype is not None:
                logits = logits.float()
            loss = loss_fn(logits, labels[s : s + size])
            (loss * (len(ids) / group_images)).backward()
            result["grad_forward_calls"] += 1
            result["losses"].append(float(loss.detach()))
            all_logits.append(logits.detach().cpu())
        if optimizer is not None:
            result["lrs"].append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            result["optimizer_steps"] += 1
    weights = [min(size, len(images) - s) for s in starts]
    result["loss"] = float(np.average(result["losses"], weights=weights))
    result["logits"] = [torch.cat(all_logits)]
    return result


@torch.no_grad()
def gd_predict(
    model: nn.Module,
    source: PatchSource,
    images: Sequence[int],
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Logits ``(B, C)`` of whole images, in eval mode, ``batch_size`` images per pass.

    Args:
        model: The model (its mode is restored afterwards).
        source: Where images are read.
        images: Image ids.
        batch_size: Images per forward pass.
        autocast_dtype: Optional autocast dtype.

    Returns:
        Logits on the model's device.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        out = []
        for s in range(0, len(images), batch_size):
            x = net.prepare([load_image(source, i) for i in images[s : s + batch_size]])
            with maybe_autocast(net.device, autocast_dtype):
                logits = net(x)
            out.append(logits.float() if autocast_dtype is not None else logits)
        return torch.cat(out)
    finally:
        net.train(was_training)
