"""PatchGD vs GD as the image grows: peak memory of a step, OOM, seconds per step, per dtype.

Per image side (ascending), dtype (``fp32``: no autocast; ``bf16``: ``torch.autocast`` with
``bfloat16``) and method, in this process: an in-memory uint8 image (``synthetic_image``,
built before the measurement) read through ``TensorPatchSource``, a fresh model and Adam, the
first step measured by :class:`~benchmarks.device.memory.PeakMemory` (it allocates the
gradients and Adam's state), then ``--repeats`` timed steps. PatchGD: ``train_batch`` with the
k, zeta, epsilon and fill batch of the options; GD: ``GDModel(image_size=side)`` and
``gd_train_batch`` on the whole image. An allocation failure (``torch.cuda.OutOfMemoryError``,
or on the CPU the address-space cap) is recorded as ``OOM`` and GD is not tried at larger sides
for that dtype; configurations that would not finish inside ``--budget-s`` are ``skipped``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._common import log
from benchmarks.device.memory import PeakMemory, is_oom, release
from benchmarks.device.settings import torch_dtype
from benchmarks.train.settings import BACKBONE, BATCH, LATENT_DIM, MB, N_CLASSES
from benchmarks.train.step import synthetic_image

METHODS = ("patchgd", "gd")


def _make_step(args: argparse.Namespace, method: str, side: int, dtype: str) -> Any:
    """(step function, source, model) of one configuration, the model on ``args.device``."""
    import torch
    import torch.nn.functional as F

    from wsi_patchgd.engine import (
        TensorPatchSource,
        build_gd_model,
        build_patchgd_model,
        gd_train_batch,
        train_batch,
    )
    from wsi_patchgd.sampling import PermutationSampler

    torch.manual_seed(0)
    dev = torch.device(args.device)
    source = TensorPatchSource([synthetic_image(side)], args.patch)
    labels = torch.tensor([1] * BATCH)
    autocast = torch_dtype(dtype)
    step: Callable[[], dict[str, Any]]
    if method == "patchgd":
        pg = build_patchgd_model(BACKBONE, N_CLASSES, out_dim=LATENT_DIM).to(dev)
        opt = torch.optim.Adam(pg.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)

        def step() -> dict[str, Any]:
            res = train_batch(
                pg, opt, source, [0], labels, PermutationSampler(), args.k, args.zeta,
                args.epsilon, rng, F.cross_entropy, args.fill_batch, autocast,
            )  # fmt: skip
            return {"patches": res["fill_patches"] + res["grad_patches"]}

        return step, source, pg
    gd = build_gd_model(BACKBONE, N_CLASSES, image_size=side, out_dim=LATENT_DIM).to(dev)
    opt = torch.optim.Adam(gd.parameters(), lr=1e-3)

    def gd_step() -> dict[str, Any]:
        gd_train_batch(gd, opt, source, [0], labels, F.cross_entropy, autocast_dtype=autocast)
        return {}

    return gd_step, source, gd


def run_config(args: argparse.Namespace, method: str, side: int, dtype: str) -> dict[str, Any]:
    """One configuration: the measured first step, then ``--repeats`` timed steps.

    Returns:
        ``status`` (``ok``, ``OOM`` or ``error`` with ``reason``), ``peak_bytes`` (the first
        step's), ``first_step_s`` and, when it fits, ``step_s`` (mean of the repeats, or the
        first step when there are none) and for PatchGD ``patches_per_s``.
    """
    import torch

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    n = -(-side // args.patch)
    res: dict[str, Any] = {
        "method": method, "side": side, "dtype": dtype, "grid": [n, n],
        "image_bytes": 3 * side * side, "z_bytes": BATCH * LATENT_DIM * n * n * 4,
    }  # fmt: skip
    t_config = time.perf_counter()
    step, source, model = _make_step(args, method, side, dtype)
    meter = PeakMemory(args.device, int(args.mem_limit_gb * 1e9))
    meter.start()
    t0 = time.perf_counter()
    try:
        out = step()
        sync()
        res["status"] = "ok"
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        res["status"] = "OOM" if is_oom(exc) else "error"
        res["reason"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        out = {}
    finally:
        res.update(meter.stop())
    res["first_step_s"] = time.perf_counter() - t0
    if not meter.hwm_reset:
        res["warning"] = "could not reset the peak-RSS mark: peak_bytes is an upper bound"
    if res["status"] == "ok":
        times = []
        try:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:  # fragmentation, rarely
            res["repeat_failed"] = (
                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            )
        res["repeat_s"] = times
        res["step_s"] = float(np.mean(times)) if times else res["first_step_s"]
        if "patches" in out:
            res["patches_per_step"] = out["patches"]
            res["patches_per_s"] = out["patches"] / res["step_s"]
    del step, source, model
    release(args.device)
    res["wall_s"] = time.perf_counter() - t_config
    return res


def _describe(res: dict[str, Any]) -> str:
    name = "PatchGD" if res["method"] == "patchgd" else "GD"
    head = f"{name:<7} {res['side']:>5} {res['dtype']}:"
    if res["status"] != "ok":
        return f"{head} {res['status']} ({res.get('reason', '')})"
    return f"{head} peak {res['peak_bytes'] / MB:,.0f} MB, {res['step_s']:.3f} s/step"


def run_sweep(
    args: argparse.Namespace,
    sizes: list[int],
    deadline: float,
    on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> tuple[list[dict[str, Any]], float]:
    """Every side x dtype x method (GD stops at its first failure per dtype) until ``deadline``.

    Args:
        args: The options.
        sizes: Image sides, ascending.
        deadline: ``time.monotonic()`` after which configurations are skipped (also those
            that would run past it, guessed from the last side's wall time).
        on_row: Called with the rows so far after each measured configuration (to save them).

    Returns:
        (one result per configuration, skipped ones included; warm-up seconds).
    """
    t0 = time.perf_counter()
    last_wall: dict[tuple[str, str], tuple[int, float]] = {}
    for method in METHODS:  # warm-up: CUDA context, kernels, allocator, thread pools
        for dtype in args.dtypes:
            last_wall[(method, dtype)] = (
                sizes[0],
                run_config(args, method, sizes[0], dtype)["wall_s"],
            )
    warmup = time.perf_counter() - t0
    log(f"sweep: warm-up {warmup:.1f} s")
    rows: list[dict[str, Any]] = []
    gd_stopped: dict[str, str] = {}
    for side in sizes:
        for dtype in args.dtypes:
            for method in METHODS:
                skip = gd_stopped.get(dtype) if method == "gd" else None
                prev = last_wall.get((method, dtype))
                # the next size's wall time, guessed from the last one's (cost ~ pixels)
                guess = prev[1] * (side / prev[0]) ** 2 if prev else 0.0
                left = deadline - time.monotonic()
                if skip is None and guess > left:
                    skip = f"time budget: ~{guess:.0f} s needed, {max(left, 0):.0f} s left"
                if skip is not None:
                    rows.append({"method": method, "side": side, "dtype": dtype,
                                 "status": "skipped", "reason": skip})  # fmt: skip
                    continue
                res = run_config(args, method, side, dtype)
                rows.append(res)
                on_row(rows)
                log("sweep: " + _describe(res))
                last_wall[(method, dtype)] = (side, res["wall_s"])
                if method == "gd" and res["status"] != "ok":
                    gd_stopped[dtype] = f"GD failed ({res['status']}) at {side} px"
    return rows, warmup


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and dtype: how the step's peak grows with the side (log-log slope).

    A slope near 0 is flat memory; near 2 grows with the pixels (quadratic in the side).
    """
    out = []
    for method in METHODS:
        for dtype in sorted({r["dtype"] for r in rows}):
            ok = [
                r for r in rows if (r["method"], r["dtype"], r["status"]) == (method, dtype, "ok")
            ]
            if len(ok) < 2:
                continue
            sides = np.log([r["side"] for r in ok])
            peaks = np.log([max(r["peak_bytes"], 1) for r in ok])
            slope = float(np.polyfit(sides, peaks, 1)[0])
            first, last = ok[0], ok[-1]
            out.append({
                "method": method, "dtype": dtype,
                "sides": [r["side"] for r in ok],
                "peak_mb": [r["peak_bytes"] / MB for r in ok],
                "peak_ratio_last_over_first": last["peak_bytes"] / max(first["peak_bytes"], 1),
                "pixel_ratio_last_over_first": (last["side"] / first["side"]) ** 2,
                "log_log_slope": slope if math.isfinite(slope) else None,
            })  # fmt: skip
    return out
