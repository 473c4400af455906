"""What both methods' training steps share: the optimizer step, the batch checks, reaching the
model inside a DDP wrapper, eval mode for inference, and autocast.

:func:`optimizer_step` is the one place the engine steps an optimizer (and its scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

import torch
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError

__all__ = [
    "LossFn",
    "check_labels",
    "evaluating",
    "maybe_autocast",
    "no_sync_unless",
    "optimizer_step",
    "unwrap",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
M = TypeVar("M", bound=nn.Module)


def unwrap(model: nn.Module, cls: type[M]) -> M:
    """``model`` itself, or the one a DDP-style wrapper holds as ``.module``.

    Raises:
        TypeError: If that is not a ``cls``.
    """
    inner = getattr(model, "module", model)
    if not isinstance(inner, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(inner).__name__}")
    return inner


def no_sync_unless(model: nn.Module, sync: bool) -> AbstractContextManager[object]:
    """``model.no_sync()`` (DDP: no gradient all-reduce on this backward) unless ``sync``;
    a no-op context for a plain module or when ``sync`` is True."""
    no_sync = getattr(model, "no_sync", None)
    return nullcontext() if sync or no_sync is None else no_sync()


def maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; its mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_labels(labels: Tensor, images: Sequence[int]) -> None:
    """Check that there is one label per image.

    Raises:
        ConfigError: If the counts differ.
    """
    if labels.shape[0] != len(images):
        raise ConfigError(f"got {labels.shape[0]} labels for {len(images)} images")


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    lrs: list[float],
) -> None:
    """Step ``optimizer``, zero its gradients, then step ``scheduler``.

    Args:
        optimizer: The optimizer.
        scheduler: Optional learning-rate scheduler, stepped after the optimizer.
        lrs: Gets the learning rate this step used (of the first parameter group).
    """
    lrs.append(float(optimizer.param_groups[0]["lr"]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
