"""The learning-rate schedule, stepped once per optimizer step.

As in the reference code (``transformers.get_linear_schedule_with_warmup`` with a decay span of
``decay_factor x epochs``): a linear warm-up over ``warmup`` optimizer steps, then a decay that
would reach zero after ``decay_factor x`` the run's optimizer steps, so that a short run ends at
``1 - 1/decay_factor`` of the peak rate rather than at zero.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["build_scheduler", "lr_factor", "steps_per_epoch"]


def steps_per_epoch(n_images: int, batch_size: int, zeta: int = 1, epsilon: int = 1) -> int:
    """Optimizer steps in one epoch: batches x ``ceil(zeta / epsilon)``."""
    batches = math.ceil(n_images / batch_size)
    return batches * math.ceil(zeta / epsilon)


def lr_factor(step: int, warmup: int, total: int, kind: str, decay_factor: float = 2.0) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Args:
        step: Optimizer steps taken so far.
        warmup: Warm-up steps (factor ``(step + 1) / (warmup + 1)`` while ``step < warmup``).
        total: The run's optimizer steps.
        kind: ``linear``, ``cosine`` or ``constant`` after the warm-up.
        decay_factor: The decay spans ``decay_factor * total`` steps.

    Returns:
        The factor, in ``(0, 1]``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1.0, decay_factor * total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        return max(1e-8, 1.0 - progress)
    if kind == "cosine":
        return max(1e-8, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ConfigError(f"schedule.scheduler={kind!r} is invalid; use linear, cosine or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    per_epoch: int,
    epochs: int,
    kind: str = "linear",
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    decay_factor: float = 2.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over optimizer steps; call ``.step()`` after every ``optimizer.step()``.

    Args:
        optimizer: The optimizer.
        per_epoch: Optimizer steps per epoch (:func:`steps_per_epoch`).
        epochs: Epochs of the run.
        kind: ``linear`` | ``cosine`` | ``constant``.
        warmup_epochs: Warm-up length in epochs' worth of steps (ignored if ``warmup_steps``).
        warmup_steps: Warm-up length in steps.
        decay_factor: See :func:`lr_factor`.
    """
    total = max(1, per_epoch * epochs)
    warmup = warmup_steps if warmup_steps is not None else round(warmup_epochs * per_epoch)
    warmup = min(int(warmup), total - 1) if total > 1 else 0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, kind, decay_factor)
    )
