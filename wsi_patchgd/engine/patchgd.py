"""Patch Gradient Descent (Gupta et al. 2023), exactly as DESIGN §2 states it.

One training batch (:func:`train_batch`):

1. Fill the latent ``Z (B, D, n_h, n_w)`` under ``torch.no_grad()``: the backbone ``f`` runs over
   every tissue patch in storage order (batches span images) and each D-vector is written at
   its own grid cell; background cells hold the background vector; cells outside an image's
   grid (padding to the batch's largest grid) are masked out.
2. ``zeta`` inner iterations: ``Z`` is detached; the sampler's ``k`` patches per image are
   recomputed by ``f`` *with* gradient and written at their own ``(row, col)`` cells, in place,
   so they stay in ``Z`` (detached) for the following iterations, as in the reference code;
   ``loss = loss_fn(g(Z, mask), y) / epsilon``; backward. The optimizer (and the learning-rate
   scheduler) steps every ``epsilon`` iterations and after the last one.

The backbone's normalisation follows one policy in every phase (``PatchGDModel.norm``, see
:mod:`wsi_patchgd.models.norm`).

Inference (:func:`predict`): fill ``Z`` from all tissue patches, apply the head once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol, TypedDict, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from wsi_patchgd.models.heads import build_head
from wsi_patchgd.models.norm import (
    batchnorm_to_groupnorm,
    check_policy,
    phase_mode,
    refresh_statistics,
)
from wsi_patchgd.sampling import PatchGrid, Sampler

__all__ = [
    "DEFAULT_NORM",
    "Latent",
    "LossFn",
    "PatchGDModel",
    "PatchGDTrainer",
    "PatchSource",
    "StepResult",
    "TensorPatchSource",
    "backbone_modes",
    "build_patchgd_model",
    "maybe_autocast",
    "predict",
    "train_batch",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
DEFAULT_NORM = "batch"  #: the policy measured best (DESIGN §2)


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


@dataclass(frozen=True)
class Latent:
    """A filled latent and its masks.

    Attributes:
        z: ``(B, D, n_h_max, n_w_max)``.
        valid: ``(B, n_h_max, n_w_max)`` bool, cells inside each image's grid.
        background: ``(B, n_h_max, n_w_max)`` bool, valid cells that are not tissue.
        grids: The images' grids.
    """

    z: Tensor
    valid: Tensor
    background: Tensor
    grids: tuple[PatchGrid, ...]


@contextmanager
def backbone_modes(module: nn.Module, train: bool, eval_norm: bool = False) -> Iterator[None]:
    """Set ``module`` to train/eval mode (BatchNorm in eval if ``eval_norm``), then restore.

    A low-level helper (tests); training uses the model's policy through
    :func:`~wsi_patchgd.models.norm.phase_mode`.
    """
    saved = [(m, m.training) for m in module.modules()]
    module.train(train)
    if train and eval_norm:
        for m in module.modules():
            if isinstance(m, _NORMS):
                m.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def _write(z: Tensor, cells: Sequence[tuple[int, np.ndarray, np.ndarray]], feats: Tensor) -> Tensor:
    """Write ``feats (m, D)`` into ``z`` at the cells ``(b, rows, cols)`` (in place)."""
    b = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r, _ in cells])
    rows = torch.cat([torch.as_tensor(r, dtype=torch.long) for _, r, _ in cells])
    cols = torch.cat([torch.as_tensor(c, dtype=torch.long) for _, _, c in cells])
    z[b.to(z.device), :, rows.to(z.device), cols.to(z.device)] = feats.to(z.dtype)
    return z


class PatchGDModel(nn.Module):
    """Backbone ``f`` + head ``g`` + background embedding + input normalisation.

    Args:
        backbone: Patch encoder ``(N, 3, P, P) float -> (N, D)``.
        head: ``forward(z, mask) -> logits``.
        latent_dim: D; default ``backbone.out_dim``.
        background: ``"zero"`` (fixed zero vector) or ``"learned"`` (a parameter, initialised to 0).
        norm: Normalisation policy of the backbone in every phase: ``"frozen"``, ``"batch"``
            or ``"group"`` (see :mod:`wsi_patchgd.models.norm`; ``"group"`` replaces the
            backbone's BatchNorm layers by GroupNorm here). Inference always runs in eval
            mode.
        mean: Per-channel mean of ``[0, 1]`` inputs (ImageNet by default).
        std: Per-channel standard deviation.

    The normalisation buffers follow the module's dtype and device (``model.double()`` makes the
    whole pipeline float64).
    """

    mean: Tensor
    std: Tensor
    background: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        latent_dim: int | None = None,
        background: str = "zero",
        norm: str = DEFAULT_NORM,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        dim = latent_dim if latent_dim is not None else getattr(backbone, "out_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError("PatchGDModel needs latent_dim (the backbone's output width)")
        if background not in ("zero", "learned"):
            raise ConfigError(f"background={background!r} is invalid; use 'zero' or 'learned'")
        self.norm = check_policy(norm)
        if self.norm == "group":
            batchnorm_to_groupnorm(backbone)
        self.backbone = backbone
        self.head = head
        self.latent_dim = dim
        self.learned_background = background == "learned"
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if self.learned_background:
            self.background = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("background", torch.zeros(dim), persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.mean.device

    def normalize(self, patches: Tensor) -> Tensor:
        """uint8 ``(N, 3, P, P)`` -> float in the model's dtype, ``/255``, mean/std normalised."""
        x = patches.to(device=self.mean.device, dtype=self.mean.dtype, non_blocking=True)
        return (x / 255.0 - self.mean) / self.std

    def embed(self, patches: Tensor) -> Tensor:
        """``f`` on uint8 patches: ``(N, 3, P, P) -> (N, D)``."""
        return self.backbone(self.normalize(patches))

    def with_background(self, z: Tensor, background: Tensor) -> Tensor:
        """``z`` with the background vector (carrying its gradient) at ``background`` cells."""
        vec = self.background.to(z.dtype).view(1, -1, 1, 1)
        return torch.where(background[:, None], vec, z)

    def fill(
        self,
        source: PatchSource,
        images: Sequence[int],
        batch_size: int,
        grad: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> tuple[Latent, int]:
        """Fill Z from every tissue patch; see :meth:`fill_latent`.

        Returns:
            The :class:`Latent` and the number of patches run through the backbone.
        """
        if batch_size < 1:
            raise ConfigError(f"fill batch_size={batch_size} must be >= 1")
        grids = tuple(source.grid(i) for i in images)
        n_h, n_w = max(g.n_h for g in grids), max(g.n_w for g in grids)
        valid = torch.zeros(len(grids), n_h, n_w, dtype=torch.bool)
        tissue = torch.zeros_like(valid)
        for b, g in enumerate(grids):
            valid[b, : g.n_h, : g.n_w] = True
            tissue[b, : g.n_h, : g.n_w] = torch.from_numpy(np.array(g.tissue))
        valid, background = valid.to(self.device), (valid & ~tissue).to(self.device)
        z = self.mean.new_zeros(len(grids), self.latent_dim, n_h, n_w)
        count = 0
        with (
            nullcontext() if grad else torch.no_grad(),
            nullcontext() if grad else phase_mode(self.backbone, self.norm, self.training),
            maybe_autocast(self.device, autocast_dtype),
        ):
            z = self.with_background(z, background)
            order = getattr(source, "storage_order", None)
            indices = [
                order(images[b], g.tissue_indices()) if order else g.tissue_indices()
                for b, g in enumerate(grids)
            ]
            chunks = list(_fill_chunks(indices, batch_size))
            _announce(source, [(images[b], idx) for chunk in chunks for b, idx in chunk])
            for chunk in chunks:
                patches = torch.cat([source.read(images[b], idx) for b, idx in chunk])
                cells = [(b, *grids[b].coords(idx)) for b, idx in chunk]
                z = _write(z, cells, self.embed(patches))
                count += patches.shape[0]
        return Latent(z, valid, background, grids), count

    def fill_latent(
        self,
        source: PatchSource,
        images: Sequence[int],
        batch_size: int,
        grad: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fill Z (paper: Algorithm 2).

        Tissue patches run through the backbone in storage order, ``batch_size`` at a time
        across images; background cells are never run and hold the background vector; cells
        outside an image's grid are zero and masked out. Without ``grad`` this runs under
        ``torch.no_grad()`` with the backbone in the mode its ``norm`` policy gives the phase
        (eval mode unless the model is training under the ``batch`` or ``group`` policy).

        Args:
            source: Where patches are read.
            images: Image ids of the batch.
            batch_size: Patches per backbone call.
            grad: Build Z with autograd through every patch, backbone mode unchanged (the
                full-image gradient; memory grows with the image — tests and small images).
            autocast_dtype: Optional autocast dtype (e.g. ``torch.bfloat16``).

        Returns:
            ``(Z (B, D, n_h_max, n_w_max), mask (B, n_h_max, n_w_max) bool)``.
        """
        latent, _ = self.fill(source, images, batch_size, grad, autocast_dtype)
        return latent.z, latent.valid

    def forward(
        self,
        z: Tensor,
        mask: Tensor | None = None,
        patches: Tensor | None = None,
        cells: Sequence[tuple[int, np.ndarray, np.ndarray]] = (),
        background_cells: Tensor | None = None,
    ) -> Tensor:
        """One inner iteration's forward: compose Z, then apply the head.

        Going through ``forward`` (rather than ``embed`` and ``head`` separately) lets
        ``DistributedDataParallel`` wrap the model.

        Args:
            z: Latent ``(B, D, n_h, n_w)``, detached; the fresh features are written into it
                in place (so they persist in the caller's Z).
            mask: Valid cells ``(B, n_h, n_w)``.
            patches: uint8 patches to recompute with gradient (``None``: none).
            cells: ``(b, rows, cols)`` per image, the cells of ``patches`` in order.
            background_cells: ``(B, n_h, n_w)`` cells that get the (learned) background vector
                with its gradient.

        Returns:
            Logits ``(B, C)``.
        """
        if patches is not None:
            z = _write(z, cells, self.embed(patches))
        if background_cells is not None and self.learned_background:
            z = self.with_background(z, background_cells)
        return self.head(z, mask)


def _announce(source: PatchSource, requests: list[tuple[int, np.ndarray]]) -> None:
    """Tell a prefetching source (one with ``prefetch``) which reads follow, in order."""
    prefetch = getattr(source, "prefetch", None)
    if prefetch is not None and requests:
        prefetch(requests)


def _fill_chunks(
    indices: Sequence[np.ndarray], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """The given patches of all images (storage order), ``batch_size`` at a time."""
    chunk: list[tuple[int, np.ndarray]] = []
    size = 0
    for b, idx in enumerate(indices):
        pos = 0
        while pos < idx.size:
            take = min(batch_size - size, idx.size - pos)
            chunk.append((b, idx[pos : pos + take]))
            size, pos = size + take, pos + take
            if size == batch_size:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _unwrap(model: nn.Module) -> PatchGDModel:
    """The :class:`PatchGDModel` itself, or the one a DDP-style wrapper holds as ``.module``."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, PatchGDModel):
        raise TypeError(f"expected a PatchGDModel, got {type(inner).__name__}")
    return inner


def maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
    rng: np.random.Generator,
    loss_fn: LossFn,
    fill_batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    refresh_norm: bool = True,
) -> StepResult:
    """One PatchGD batch: fill Z, then ``zeta`` inner iterations (DESIGN §2).

    Args:
        model: The :class:`PatchGDModel` (or a ``DistributedDataParallel`` wrapping one); put
            in train mode here.
        optimizer: Stepped every ``epsilon`` iterations and after the last; its gradients are
            zeroed first. ``None``: no step and no zeroing, the gradients accumulated over the
            ``zeta`` iterations stay in ``.grad`` (zero them beforehand).
        source: Where patches are read.
        images: Image ids of the batch.
        labels: ``(B,)`` targets for ``loss_fn``.
        sampler: Chooses the patches of each inner iteration.
        k: Patches per image per inner iteration.
        zeta: Inner iterations.
        epsilon: Gradient-accumulation steps; each loss is divided by it.
        rng: Sampler randomness (checkpoint ``rng.bit_generator.state`` to resume).
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
    if labels.shape[0] != len(images):
        raise ConfigError(f"got {labels.shape[0]} labels for {len(images)} images")
    net = _unwrap(model)
    model.train()
    labels = labels.to(net.device)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    plans = [sampler.plan(source.grid(i), k, zeta, rng) for i in images]
    if net.norm == "frozen" and refresh_norm:
        first = [(images[b], plans[b][0]) for b in range(len(images)) if plans[b][0].size]
        if sum(idx.size for _, idx in first) >= 2:
            x = torch.cat([source.read(i, idx) for i, idx in first])
            with maybe_autocast(net.device, autocast_dtype):
                refresh_statistics(net.backbone, net.normalize(x))
    latent, fill_patches = net.fill(source, images, fill_batch_size, False, autocast_dtype)
    _announce(
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
        grad_forward_calls=0, grad_patches=0, fill_patches=fill_patches, lrs=[],
        latent=latent.z,
    )  # fmt: skip
    z = latent.z
    with phase_mode(net.backbone, net.norm, True):
        for j in range(zeta):
            chunk = [(b, plans[b][j]) for b in range(len(images)) if plans[b][j].size]
            patches = (
                torch.cat([source.read(images[b], idx) for b, idx in chunk]) if chunk else None
            )
            cells = [(b, *latent.grids[b].coords(idx)) for b, idx in chunk]
            if patches is not None:
                result["grad_forward_calls"] += 1
                result["grad_patches"] += patches.shape[0]
            z = z.detach()  # the fresh features of earlier iterations stay, without gradient
            with maybe_autocast(net.device, autocast_dtype):
                logits = model(z, latent.valid, patches, cells, latent.background)
            if autocast_dtype is not None:
                logits = logits.float()
            loss = loss_fn(logits, labels)
            (loss / epsilon).backward()
            result["losses"].append(float(loss.detach()))
            result["logits"].append(logits.detach().cpu())
            result["sampled"].append([plans[b][j] for b in range(len(images))])
            if optimizer is not None and ((j + 1) % epsilon == 0 or j == zeta - 1):
                result["lrs"].append(float(optimizer.param_groups[0]["lr"]))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
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
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        latent, _ = net.fill(source, images, batch_size, False, autocast_dtype)
        with maybe_autocast(net.device, autocast_dtype):
            logits = net.head(latent.z, latent.valid)
        return logits.float() if autocast_dtype is not None else logits
    finally:
        net.train(was_training)


@dataclass(frozen=True)
class PatchGDTrainer:
    """The PatchGD settings of a run, bound to :func:`train_batch` and :func:`predict`."""

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
        """:func:`train_batch` with this trainer's settings."""
        return train_batch(
            model, optimizer, source, images, labels, self.sampler, self.k, self.zeta,
            self.epsilon, rng, self.loss_fn, self.fill_batch_size, self.autocast_dtype,
            scheduler,
        )  # fmt: skip

    def predict(self, model: nn.Module, source: PatchSource, images: Sequence[int]) -> Tensor:
        """:func:`predict` with this trainer's settings."""
        return predict(model, source, images, self.fill_batch_size, self.autocast_dtype)


def build_patchgd_model(
    backbone: str,
    num_classes: int,
    head: str = "pooled",
    out_dim: int = 256,
    grid: tuple[int, int] | None = None,
    weights: str | None = None,
    checkpointing: bool = False,
    background: str = "zero",
    norm: str = DEFAULT_NORM,
    head_channels: int = 256,
    n_convs: int = 4,
    dropout: float = 0.2,
) -> PatchGDModel:
    """A :class:`PatchGDModel` from names (see ``build_backbone`` and ``build_head``).

    Raises:
        ConfigError: For unknown names or invalid values.
    """
    return PatchGDModel(
        build_backbone(backbone, out_dim, weights, checkpointing),
        build_head(head, out_dim, num_classes, grid, head_channels, n_convs, dropout),
        out_dim,
        background,
        norm,
    )
