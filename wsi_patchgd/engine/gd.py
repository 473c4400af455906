"""The standard gradient-descent baseline's training step and inference: the whole image,
resized, through one network (:class:`~wsi_patchgd.engine.model.GDModel`).

:func:`gd_train_batch` and :func:`gd_predict` mirror :func:`~wsi_patchgd.engine.patchgd.train_batch`
and :func:`~wsi_patchgd.engine.patchgd.predict`, reading images through the same
:class:`~wsi_patchgd.engine.source.PatchSource` (:func:`load_image` stitches an image's patches).

The baseline holds each image of the level it reads in memory (it is read patch by patch and
stitched, then resized): point it at a level that fits, as a GD baseline on gigapixel images
must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from wsi_patchgd.engine.model import GDModel
from wsi_patchgd.engine.source import PatchSource
from wsi_patchgd.engine.step import (
    LossFn,
    check_labels,
    evaluating,
    maybe_autocast,
    no_sync_unless,
    optimizer_step,
    unwrap,
)
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.norm import average_running_statistics, phase_mode, refresh_statistics

__all__ = ["GDStepResult", "gd_predict", "gd_train_batch", "load_image"]


def load_image(source: PatchSource, image: int) -> Tensor:
    """The whole image of ``source`` as uint8 ``(3, n_h * P, n_w * P)``, background included."""
    grid = source.grid(image)
    p = grid.patch_size
    patches = source.read(image, np.arange(grid.n_patches, dtype=np.int64))
    tiles = patches.reshape(grid.n_h, grid.n_w, 3, p, p).permute(2, 0, 3, 1, 4)
    return tiles.reshape(3, grid.n_h * p, grid.n_w * p)


class GDStepResult(TypedDict):
    """What :func:`gd_train_batch` returns.

    Keys:
        loss: Mean over the batch's images of the loss (weighted by micro-batch size).
        losses: Loss of each micro-batch.
        logits: One detached ``(B, C)`` tensor, every image of the batch (the same shape of
            result as PatchGD's per-iteration logits, so accuracy code is shared).
        optimizer_steps: Number of ``optimizer.step()`` calls.
        grad_forward_calls: Forward passes with gradient (one per micro-batch).
        lrs: Learning rate of each optimizer step (the rate the step used).
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
        optimizer: As in PatchGD's ``train_batch``: ``None`` leaves the step to the caller
            (gradients accumulate in ``.grad``; nothing is zeroed; ``scheduler`` is unused).
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
    check_labels(labels, images)
    net = unwrap(model, GDModel)
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
            # under DDP, gradients are all-reduced only on the backward before a step
            with no_sync_unless(model, s == group[-1]):
                with (
                    maybe_autocast(net.device, autocast_dtype),
                    phase_mode(net.features, net.norm, True),
                ):
                    if net.norm == "frozen":
                        if x.shape[0] >= 2:
                            refresh_statistics(net.features, x)
                        average_running_statistics(net.features)  # over a DDP job's processes
                    logits = model(x)
                if autocast_dtype is not None:
                    logits = logits.float()
                loss = loss_fn(logits, labels[s : s + size])
                (loss * (len(ids) / group_images)).backward()
            result["grad_forward_calls"] += 1
            result["losses"].append(float(loss.detach()))
            all_logits.append(logits.detach().cpu())
        if optimizer is not None:
            optimizer_step(optimizer, scheduler, result["lrs"])
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
    net = unwrap(model, GDModel)
    with evaluating(net):
        out = []
        for s in range(0, len(images), batch_size):
            x = net.prepare([load_image(source, i) for i in images[s : s + batch_size]])
            with maybe_autocast(net.device, autocast_dtype):
                logits = net(x)
            out.append(logits.float() if autocast_dtype is not None else logits)
        return torch.cat(out)
