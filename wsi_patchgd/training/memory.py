"""Memory budget: choose k (patches with gradient per image per inner iteration) and the Z-filling
batch so that a training step fits a budget.

A step costs about parameters + gradients + optimizer state + B * k patch activations (kept for
backward) + Z and the head's activations over Z. Gradients and optimizer state exist only for the
trainable parameters (``model.trainable`` freezes the others). Activations are measured, not
guessed: one forward of a single patch through the backbone (and of a small grid through the
head) with hooks that add up every leaf module's output; with gradients, only outputs that are
part of the autograd graph count (a frozen stem keeps nothing for backward), and ``nn.Identity``
outputs (its input) are not counted twice. This works for CNNs and vision
transformers alike (a ViT's leaves are its linear layers, LayerNorms and activations; fused
attention is a function, whose few internal buffers per block the 1.5 factor covers).
``benchmarks/bench_train.py`` checks the estimate against the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MemoryBudgetError
from .config import parse_bytes


@dataclass(frozen=True)
class MemoryPlan:
    k: int
    fill_batch_size: int
    budget: int
    fixed: int  #: parameters + gradients + optimizer state
    latent: int  #: Z, its clone and the head's activations
    per_patch_grad: int  #: activations of one patch kept for backward
    per_patch_fill: int  #: peak of one patch's gradient-free forward

    def describe(self) -> str:
        mb = 1e6
        return (
            f"budget {self.budget / mb:.0f} MB = weights+grads+optimizer "
            f"{self.fixed / mb:.0f} MB + Z/head {self.latent / mb:.1f} MB + B*k x "
            f"{self.per_patch_grad / mb:.2f} MB/patch"
        )


def _activation_bytes(module: nn.Module, x: torch.Tensor, *args: object) -> tuple[int, int]:
    """(sum of all leaf outputs, largest single leaf output) in bytes for one forward.

    Under autograd only outputs that require grad count; ``nn.Identity`` outputs (the input
    itself: timm's placeholders for layer scale, stochastic depth, ...) never do.
    """
    total, largest = 0, 0
    grad = torch.is_grad_enabled()

    def hook(m: nn.Module, _i: object, out: object) -> None:
        nonlocal total, largest
        if isinstance(out, torch.Tensor) and not isinstance(m, nn.Identity):
            if grad and not out.requires_grad:
                return
            b = out.numel() * out.element_size()
            total += b
            largest = max(largest, b)

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    was = module.training
    try:
        module.eval()  # same output sizes; BatchNorm accepts a single 1x1 sample in eval mode
        module(x, *args)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return total, largest


def _fixed_bytes(model: nn.Module, optimizer: str) -> int:
    """Weights (all parameters) + gradients and optimizer state (trainable ones only)."""
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    states = 1 if optimizer == "sgd" else 2
    return (n_params + n_train * (1 + states)) * 4


def plan_memory(
    model: nn.Module,
    patch_size: int,
    batch_size: int,
    cells: int,
    latent_dim: int,
    budget: str | int,
    optimizer: str = "adam",
    max_fill_batch: int = 1024,
) -> MemoryPlan:
    """The largest k and fill batch that fit ``budget``.

    Args:
        model: a PatchGDModel (``.backbone``, ``.head``).
        patch_size: P.
        batch_size: images per step (B).
        cells: grid cells of the largest image (n_h * n_w).
        latent_dim: D.
        budget: bytes or a size string ("4GB").
        optimizer: adam/adamw (2 states per trainable parameter) or sgd (1).

    Raises:
        MemoryBudgetError: not even k = 1 fits; the message says how much is needed.
    """
    total_budget = budget if isinstance(budget, int) else parse_bytes(budget)
    fixed = _fixed_bytes(model, optimizer)
    x = torch.zeros(1, 3, patch_size, patch_size)
    with torch.enable_grad():
        grad_bytes, _ = _activation_bytes(model.backbone, x)  # type: ignore[arg-type]
    with torch.no_grad():
        _, fill_peak = _activation_bytes(model.backbone, x)  # type: ignore[arg-type]
        side = 4
        z = torch.zeros(1, latent_dim, side, side)
        head: nn.Module = model.head  # type: ignore[assignment]
        head_total, _ = _activation_bytes(head, z, torch.ones(1, side, side, dtype=torch.bool))
    per_cell = head_total / (side * side) + 3 * latent_dim * 4
    latent = int(batch_size * cells * per_cell * 2)  # forward + backward of the head
    per_patch_grad = int(grad_bytes * 1.5)  # outputs + saved inputs of some ops
    per_patch_fill = int(fill_peak * 2 + x.numel() * 4)
    room = total_budget - fixed - latent
    k = room // max(1, batch_size * per_patch_grad)
    if k < 1:
        need = fixed + latent + batch_size * per_patch_grad
        raise MemoryBudgetError(
            f"memory budget {budget} is too small for k=1: one step needs about "
            f"{need / 1e6:.0f} MB (weights+grads+optimizer {fixed / 1e6:.0f} MB, Z and head "
            f"{latent / 1e6:.0f} MB, one patch per image {batch_size * per_patch_grad / 1e6:.0f}"
            " MB); raise patchgd.memory_budget, lower schedule.batch_size, or use a smaller "
            "backbone or patch size"
        )
    fill = max(1, min(max_fill_batch, (total_budget - fixed - latent) // max(1, per_patch_fill)))
    return MemoryPlan(
        int(k), int(fill), total_budget, fixed, latent, per_patch_grad, per_patch_fill
    )


def gd_step_bytes(
    model: nn.Module, side: int, batch_size: int, optimizer: str = "adam", probe: int = 64
) -> int:
    """Memory of one standard-GD training step on ``batch_size`` images of ``side`` px.

    Weights + gradients + optimizer state (of the trainable parameters), plus the activations
    kept for backward, measured on one ``probe`` px image and scaled by area (exact for a
    convolutional network up to the rounding of its strides), with the same 1.5 factor as
    :func:`plan_memory`.
    """
    fixed = _fixed_bytes(model, optimizer)
    with torch.enable_grad():
        act, _ = _activation_bytes(model, torch.zeros(1, 3, probe, probe))
    per_image = act * 1.5 * (side / probe) ** 2 + 3 * side * side * 4
    return int(fixed + batch_size * per_image)


def plan_gd_image_size(
    model: nn.Module,
    batch_size: int,
    budget: str | int,
    max_side: int,
    optimizer: str = "adam",
    multiple: int = 32,
) -> int:
    """The largest image side (a multiple of ``multiple``, at most ``max_side``) at which a GD
    step of ``batch_size`` images fits ``budget``: what "GD forced to downscale" means.

    Raises:
        MemoryBudgetError: not even ``multiple`` px images fit.
    """
    total = budget if isinstance(budget, int) else parse_bytes(budget)
    if gd_step_bytes(model, max_side, batch_size, optimizer) <= total:
        return max_side  # full resolution fits
    side = 0
    s = multiple
    while s <= max(max_side, multiple):
        if gd_step_bytes(model, s, batch_size, optimizer) > total:
            break
        side = s
        s += multiple
    if side == 0:
        need = gd_step_bytes(model, multiple, batch_size, optimizer)
        raise MemoryBudgetError(
            f"memory budget {budget} is too small for standard GD even at {multiple} px: one "
            f"step of {batch_size} images needs about {need / 1e6:.0f} MB; raise "
            "patchgd.memory_budget or lower schedule.batch_size"
        )
    return min(side, max_side)
