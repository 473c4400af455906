"""The PatchGD training step (Gupta et al. 2023), exactly as DESIGN §2 states it, and inference.

One training batch (:func:`train_batch`):

1. Fill the latent ``Z (B, D, n_h, n_w)`` under ``torch.no_grad()``
   (:func:`~wsi_patchgd.engine.fill.fill_latent`): the backbone ``f`` runs over every tissue
   patch in storage order (batches span images) and each D-vector is written at its own grid
   cell; background cells hold the background vector; cells outside an image's grid (padding to
   the batch's largest grid) are masked out.
2. ``zeta`` inner iterations: ``Z`` is detached; the sampler's ``k`` patches per image are
   recomputed by ``f`` *with* gradient and written at their own ``(row, col)`` cells, in place,
   so they stay in ``Z`` (detached) for the following iterations, as in the reference code;
   ``loss = loss_fn(g(Z, mask), y) / epsilon``; backward. The optimizer (and the learning-rate
   scheduler) steps every ``epsilon`` iterations and after the last one — or, with
   ``optimizer=None``, the gradients stay in ``.grad`` and the caller steps.

The backbone's normalisation follows one policy in every phase (``PatchGDModel.norm``, see
:mod:`wsi_patchgd.models.norm`).

Inference (:func:`predict`): fill ``Z`` from all tissue patches, apply the head once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from wsi_patchgd.engine.fill import fill_latent
from wsi_patchgd.engine.model import PatchGDModel
from wsi_patchgd.engine.source import PatchSource, announce, read_patches
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
from wsi_patchgd.sampling import Sampler

__all__ = ["PatchGDSettings", "StepResult", "predict", "train_batch"]


class StepResult(TypedDict):
    """What :func:`train_batch` returns.

    Keys:
        loss: Mean over inner iterations of the unscaled loss.
        losses: Unscaled loss of each inner iteration.
        logits: Detached ``(B, C)`` logits of each inner iteration (for training accuracy over
            all of them).
        sampled: ``sampled[j][b]``: patch indices recomputed for image ``b`` at iteration ``j``.
        optimizer_steps: Number of ``optimizer.step()`` calls.
        grad_forward_calls: Backbone calls with gradient (one per inner iteration).
        grad_patches: Patches run through the backbone with gradient (``<= B * k * zeta``).
        fill_patches: Patches run through the backbone without gradient to fill Z.
        lrs: Learning rate of each optimizer step (the rate the step used).
        latent: The latent ``Z`` at the end of the batch, detached: the filled features with
            every recomputed patch's fresh features written over them.
    """

    loss: float
    losses: list[float]
    logits: list[Tensor]
    sampled: list[list[np.ndarray]]
    optimizer_steps: int
    grad_forward_calls: int
    grad_patches: int
    fill_patches: int
    lrs: list[float]
    latent: Tensor


def train_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    source: PatchSource,
    images: Sequence[int],
    labels: Tensor,
    sampler: Sampler,
    k: int,
    zeta: int,
    epsilon: int,
    rng: np.random.Generator | Sequence[np.random.Generator],
    loss_fn: LossFn,
    fill_batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    refresh_norm: bool = True,
) -> StepResult:
    """One PatchGD batch: fill Z, then ``zeta`` inner iterations (DESIGN §2).

    Two ways to drive it:

    - ``optimizer`` given: the engine zeroes its gradients first, steps it every ``epsilon``
      iterations and after the last (zeroing the gradients after each step), and steps
      ``scheduler`` after every optimizer step. This is what the trainer does.
    - ``optimizer=None``: the engine only accumulates gradients, as ``loss.backward()`` does in
      a plain PyTorch loop: nothing is zeroed or stepped, and the sum over the ``zeta``
      iterations of ``grad(loss_j) / epsilon`` is added to ``.grad``. Call
      ``optimizer.zero_grad()`` before and ``optimizer.step()`` after (clip, scale or log the
      gradients in between if you like); ``scheduler`` is not used. With ``epsilon == zeta``
      this gives exactly the step the engine takes with the optimizer.

    Args:
        model: The :class:`PatchGDModel` (or a ``DistributedDataParallel`` wrapping one); put
            in train mode here.
        optimizer: The optimizer the engine steps, or ``None`` (the caller steps; see above).
        source: Where patches are read.
        images: Image ids of the batch.
        labels: ``(B,)`` targets for ``loss_fn``.
        sampler: Chooses the patches of each inner iteration.
        k: Patches per image per inner iteration.
        zeta: Inner iterations.
        epsilon: Gradient-accumulation steps; each loss is divided by it.
        rng: Sampler randomness: one generator for the batch, or one per image (what the
            trainer gives, keyed by seed, epoch and slide, so that the draws do not depend on
            which process or batch an image is in).
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        fill_batch_size: Patches per backbone call while filling Z.
        autocast_dtype: Optional autocast dtype (e.g. ``torch.bfloat16``).
        scheduler: Learning-rate scheduler stepped after every optimizer step.
        refresh_norm: Under the ``frozen`` policy, refresh the BatchNorm running statistics
            from the first inner iteration's patches before the fill (see
            :func:`~wsi_patchgd.models.norm.refresh_statistics`).

    Returns:
        The :class:`StepResult`.

    Raises:
        ConfigError: If ``k``, ``zeta`` or ``epsilon`` is below 1 or labels do not match images.
    """
    for key, value in (("k", k), ("zeta", zeta), ("epsilon", epsilon)):
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    check_labels(labels, images)
    net = unwrap(model, PatchGDModel)
    model.train()
    labels = labels.to(net.device)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    rngs = [rng] * len(images) if isinstance(rng, np.random.Generator) else list(rng)
    if len(rngs) != len(images):
        raise ConfigError(f"got {len(rngs)} random generators for {len(images)} images")
    plans = [sampler.plan(source.grid(i), k, zeta, r) for i, r in zip(images, rngs, strict=True)]
    if net.norm == "frozen" and refresh_norm:
        first = [(images[b], plans[b][0]) for b in range(len(images)) if plans[b][0].size]
        if sum(idx.size for _, idx in first) >= 2:
            x = read_patches(source, first)
            with maybe_autocast(net.device, autocast_dtype):
                refresh_statistics(net.backbone, net.normalize(x))
        average_running_statistics(net.backbone)  # over the processes of a DDP job
    latent = fill_latent(net, source, images, fill_batch_size, False, autocast_dtype)
    announce(
        source,
        [
            (images[b], plans[b][j])
            for j in range(zeta)
            for b in range(len(images))
            if plans[b][j].size
        ],
    )
    result = StepResult(
        loss=0.0, losses=[], logits=[], sampled=[], optimizer_steps=0,
        grad_forward_calls=0, grad_patches=0, fill_patches=latent.patches, lrs=[],
        latent=latent.z,
    )  # fmt: skip
    z = latent.z
    with phase_mode(net.backbone, net.norm, True):
        for j in range(zeta):
            chunk = [(b, plans[b][j]) for b in range(len(images)) if plans[b][j].size]
            patches = (
                read_patches(source, [(images[b], idx) for b, idx in chunk]) if chunk else None
            )
            cells = [(b, *latent.grids[b].coords(idx)) for b, idx in chunk]
            if patches is not None:
                result["grad_forward_calls"] += 1
                result["grad_patches"] += patches.shape[0]
            z = z.detach()  # the fresh features of earlier iterations stay, without gradient
            steps = (j + 1) % epsilon == 0 or j == zeta - 1
            # under DDP, gradients are all-reduced only on the backward before a step
            with no_sync_unless(model, steps):
                with maybe_autocast(net.device, autocast_dtype):
                    logits = model(z, latent.valid, patches, cells, latent.background)
                if autocast_dtype is not None:
                    logits = logits.float()
                loss = loss_fn(logits, labels)
                (loss / epsilon).backward()
            result["losses"].append(float(loss.detach()))
            result["logits"].append(logits.detach().cpu())
            result["sampled"].append([plans[b][j] for b in range(len(images))])
            if optimizer is not None and steps:
                optimizer_step(optimizer, scheduler, result["lrs"])
                result["optimizer_steps"] += 1
    result["loss"] = float(np.mean(result["losses"]))
    result["latent"] = z.detach()
    return result


@torch.no_grad()
def predict(
    model: nn.Module,
    source: PatchSource,
    images: Sequence[int],
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Inference: fill Z from all tissue patches (eval mode), apply the head once.

    Args:
        model: The model (its mode is restored afterwards).
        source: Where patches are read.
        images: Image ids.
        batch_size: Patches per backbone call.
        autocast_dtype: Optional autocast dtype.

    Returns:
        Logits ``(B, C)`` (float32 under autocast), on the model's device.
    """
    net = unwrap(model, PatchGDModel)
    with evaluating(net):
        latent = fill_latent(net, source, images, batch_size, False, autocast_dtype)
        with maybe_autocast(net.device, autocast_dtype):
            logits = net.head(latent.z, latent.valid)
        return logits.float() if autocast_dtype is not None else logits


@dataclass(frozen=True)
class PatchGDSettings:
    """The PatchGD settings of a run, bound to :func:`train_batch` and :func:`predict`.

    Attributes:
        sampler: Chooses the patches of each inner iteration.
        k: Patches per image per inner iteration.
        zeta: Inner iterations per batch.
        epsilon: Inner iterations per optimizer step (``epsilon == zeta``: one step a batch).
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        fill_batch_size: Patches per backbone call while filling Z.
        autocast_dtype: Optional autocast dtype.
    """

    sampler: Sampler
    k: int
    zeta: int
    epsilon: int
    loss_fn: LossFn
    fill_batch_size: int = 256
    autocast_dtype: torch.dtype | None = None

    def train_batch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        source: PatchSource,
        images: Sequence[int],
        labels: Tensor,
        rng: np.random.Generator,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> StepResult:
        """:func:`train_batch` with these settings (``optimizer=None``: the caller steps)."""
        return train_batch(
            model, optimizer, source, images, labels, self.sampler, self.k, self.zeta,
            self.epsilon, rng, self.loss_fn, self.fill_batch_size, self.autocast_dtype,
            scheduler,
        )  # fmt: skip

    def predict(self, model: nn.Module, source: PatchSource, images: Sequence[int]) -> Tensor:
        """:func:`predict` with these settings."""
        return predict(model, source, images, self.fill_batch_size, self.autocast_dtype)
