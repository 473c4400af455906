"""Exclusive per-phase wall-clock timers wrapped around one PatchGD ``train_batch``.

Nothing in the package is changed: :func:`instrument` wraps, for the duration of a ``with``
block, the names the engine calls (``read_patches`` and ``write_cells`` where ``fill`` /
``patchgd`` / ``model`` imported them, ``optimizer_step``, ``Tensor.backward``) and hooks the
model's modules (input normalisation, backbone, head; the backbone's backward pre-hook marks
where the backward pass enters the backbone). Time is charged to the innermost open phase, so
the phases of a step add up to the step exactly; what no phase claims is ``other``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import torch
from torch import nn

#: The phases, in the order of the tables (``other``: sampler, masks, Python between phases).
PHASES = (
    "fill: read wait",
    "fill: input normalize",
    "fill: backbone forward",
    "fill: Z writes",
    "inner: read wait",
    "inner: input normalize",
    "inner: backbone forward",
    "inner: Z writes",
    "inner: head forward",
    "backward: head + Z",
    "backward: backbone",
    "optimizer step",
    "other",
)
#: Phases that are backbone compute (the goal: >= 90 % of the step).
BACKBONE_PHASES = ("fill: backbone forward", "inner: backbone forward", "backward: backbone")


class PhaseClock:
    """Exclusive time per phase on the main thread, plus read work done by prefetch threads."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync  #: waits for the GPU before each reading (CUDA runs asynchronously)
        self.seconds: dict[str, float] = defaultdict(float)
        self.background: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0
        self._lock = threading.Lock()
        self._main = threading.get_ident()

    def _charge(self) -> float:
        if self._sync is not None:
            self._sync()
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now
        return now

    def enter(self, name: str) -> None:
        """Open phase ``name`` (the open one stops being charged until it is closed)."""
        self._charge()
        self._stack.append(name)

    def leave(self, depth: int | None = None) -> None:
        """Close the innermost phase (or every phase above ``depth``)."""
        self._charge()
        target = len(self._stack) - 1 if depth is None else depth
        del self._stack[target:]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """``with clock.phase(name):`` charges the block to ``name``."""
        depth = len(self._stack)
        self.enter(name)
        try:
            yield
        finally:
            self.leave(depth)

    def add_background(self, name: str, seconds: float) -> None:
        """Work another thread did (it overlaps the main thread's phases)."""
        with self._lock:
            self.background[name] += seconds

    @property
    def stage(self) -> str:
        """``fill`` or ``inner``: which part of the batch the main thread is in."""
        return "fill" if not torch.is_grad_enabled() else "inner"


def _wrap(clock: PhaseClock, name: Callable[[], str], fn: Callable[..., Any]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with clock.phase(name()):
            return fn(*args, **kwargs)

    return wrapped


def _timed_background(clock: PhaseClock, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            where = "main thread" if threading.get_ident() == clock._main else "prefetch threads"
            clock.add_background(f"read + decode ({where})", time.perf_counter() - t0)

    return wrapped


def _hook_module(clock: PhaseClock, module: nn.Module, what: str) -> list[Any]:
    depth: list[int] = []

    def pre(_m: nn.Module, _a: Any) -> None:
        depth.append(len(clock._stack))
        clock.enter(f"{clock.stage}: {what}")

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        clock.leave(depth.pop())

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@contextmanager
def instrument(
    net: nn.Module, stores: list[Any], sync: Callable[[], None] | None = None
) -> Iterator[PhaseClock]:
    """Time the phases of the ``train_batch`` calls made inside the block.

    Args:
        net: The :class:`~wsi_patchgd.engine.PatchGDModel` (not a DDP wrapper).
        stores: The source's ``SlideStore`` objects (their ``read_patches`` is timed wherever
            it runs: on the prefetch threads it overlaps the main thread).
        sync: Called at every phase boundary before the clock is read
            (``torch.cuda.synchronize`` on a GPU, so that a phase is charged the kernels it
            launched; this slows the step a little: compare the plain step).

    Yields:
        The clock; the caller opens the root phase (``other``) around the step.
    """
    from wsi_patchgd.engine import fill, model, patchgd

    clock = PhaseClock(sync)
    handles: list[Any] = []
    with ExitStack() as stack:
        read = lambda: f"{clock.stage}: read wait"  # noqa: E731
        write = lambda: f"{clock.stage}: Z writes"  # noqa: E731
        for mod, attr, name in (
            (fill, "read_patches", read),
            (patchgd, "read_patches", read),
            (fill, "write_cells", write),
            (model, "write_cells", write),
            (patchgd, "optimizer_step", lambda: "optimizer step"),
        ):
            stack.enter_context(
                mock.patch.object(mod, attr, _wrap(clock, name, getattr(mod, attr)))
            )
        for s in stores:
            stack.enter_context(
                mock.patch.object(s, "read_patches", _timed_background(clock, s.read_patches))
            )
        backward = torch.Tensor.backward

        def timed_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            depth = len(clock._stack)
            clock.enter("backward: head + Z")
            try:
                backward(self, *args, **kwargs)
            finally:
                clock.leave(depth)

        stack.enter_context(mock.patch.object(torch.Tensor, "backward", timed_backward))
        handles += _hook_module(clock, net.input_norm, "input normalize")
        handles += _hook_module(clock, net.backbone, "backbone forward")
        handles += _hook_module(clock, net.head, "head forward")
        handles.append(
            net.backbone.register_full_backward_pre_hook(
                lambda _m, _g: clock.enter("backward: backbone")
            )
        )
        try:
            yield clock
        finally:
            for h in handles:
                h.remove()
