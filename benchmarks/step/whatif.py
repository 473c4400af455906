"""What the fixes would save, measured: op groups of a plain step, channels_last backbone.

:func:`op_groups` runs one plain step under ``torch.profiler`` and groups the ops' self CPU
time (convolutions, batch norm, activations, Z index writes, optimizer, ...);
:func:`channels_last_ratios` times the backbone alone on a fill batch (no grad) and on a
gradient batch (forward + backward) in the default layout and in ``channels_last``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

#: Op-name fragments -> group (first match wins; the rest is ``other ops``).
OP_GROUPS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("batch norm", ("batch_norm",)),
    ("activations", ("hardtanh", "relu", "clamp", "threshold")),
    ("Z writes (index_put / index)", ("index_put", "index_", "aten::index")),
    ("optimizer (Adam)", ("adam", "_foreach", "addcdiv", "addcmul", "lerp", "sqrt")),
    ("linear / pooling", ("addmm", "mm", "linear", "pool", "mean")),
    ("copies / casts", ("copy_", "to", "contiguous", "clone", "cat", "fill_", "zero_")),
)


def op_groups(step: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Self seconds of one ``step()`` per op group (``torch.profiler``): CPU time, or on
    ``device="cuda"`` the GPU time of the kernels each op launched."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
    groups: dict[str, float] = {name: 0.0 for name, _ in OP_GROUPS}
    groups["other ops"] = 0.0
    for ev in prof.key_averages():
        name = ev.key.lower()
        if not name.startswith("aten::") and not name.startswith("optimizer"):
            continue  # python-level / profiler records
        group = next((g for g, frags in OP_GROUPS if any(f in name for f in frags)), "other ops")
        groups[group] += (ev.self_device_time_total if cuda else ev.self_cpu_time_total) / 1e6
    return groups


def _best(fn: Callable[[], Any], repeats: int = 3, sync: Callable[[], Any] = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def channels_last_ratios(
    model: Any, patch: int, fill_n: int, grad_n: int, device: str = "cpu"
) -> dict[str, float]:
    """Backbone seconds in ``channels_last`` / in the default layout (below 1: faster).

    Args:
        model: The :class:`~wsi_patchgd.engine.PatchGDModel` (copied, not changed).
        patch: Patch side.
        fill_n: Patches of a fill call (no grad).
        grad_n: Patches of an inner iteration (forward + backward).
        device: Where the model is (``cpu`` or ``cuda``); the inputs are made there.
    """
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    out: dict[str, float] = {}
    for fmt in ("contiguous", "channels_last"):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        net = copy.deepcopy(model.backbone).to(memory_format=mf).train()
        xf = torch.randn(fill_n, 3, patch, patch, device=device).contiguous(memory_format=mf)
        xg = torch.randn(grad_n, 3, patch, patch, device=device).contiguous(memory_format=mf)

        def fwd(net: Any = net, xf: Any = xf) -> None:
            with torch.no_grad():
                net(xf)

        def fwd_bwd(net: Any = net, xg: Any = xg) -> None:
            net(xg).sum().backward()
            net.zero_grad(set_to_none=True)

        out[f"fill_forward_{fmt}_s"] = _best(fwd, sync=sync)
        out[f"grad_forward_backward_{fmt}_s"] = _best(fwd_bwd, sync=sync)
    out["fill_forward_ratio"] = (
        out["fill_forward_channels_last_s"] / out["fill_forward_contiguous_s"]
    )
    out["grad_forward_backward_ratio"] = (
        out["grad_forward_backward_channels_last_s"] / out["grad_forward_backward_contiguous_s"]
    )
    return out
