"""One training configuration in a fresh process (the child): a measured first step, then timings.

The child builds an in-memory image, a PatchGD or GD model and Adam, and measures the first
step's peak memory (on the CPU: the rise of the peak RSS over the RSS right before the step, the
kernel's high-water mark reset just before it; on CUDA: ``max_memory_allocated``) under an
address-space cap of ``--mem-limit-gb``, then times ``--repeats`` further steps.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._memory import proc_status_kb
from benchmarks.train.settings import BACKBONE, BATCH, LATENT_DIM, N_CLASSES


def rss_bytes() -> int:
    """This process's resident memory now, bytes."""
    return proc_status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM) since start or :func:`reset_peak_rss`."""
    return proc_status_kb("VmHWM") * 1024


def synthetic_image(side: int, seed: int = 0) -> Any:
    """uint8 (3, side, side) H&E-coloured noise (pink/purple), made without float temporaries."""
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.empty(3, side, side, dtype=torch.uint8)
    for c, (lo, hi) in enumerate(((150, 250), (60, 200), (130, 235))):
        img[c] = torch.randint(lo, hi, (side, side), generator=g, dtype=torch.uint8)
    return img


def _is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (Python, torch, CUDA or C++)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("out of memory", "can't allocate", "cannot allocate", "bad_alloc")
    )


def child_step(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in a fresh process: a measured first step, then timed repeats.

    Args:
        args: ``bench_train``'s options (``--method``, ``--size``, ``--device``, ``--k`` ...).

    Returns:
        The result as JSON-ready values: grid, data and Z sizes, ``plan_memory``'s estimate
        (PatchGD), ``fits``, ``first_step_s``, ``step_peak_bytes``, ``repeat_s`` ...
    """
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
    from wsi_patchgd.training.memory import plan_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    side, p = args.size, args.patch
    res: dict[str, Any] = {
        "method": args.method,
        "side": side,
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }

    t0 = time.perf_counter()
    image = synthetic_image(side)
    source = TensorPatchSource([image], p)
    del image
    grid = source.grid(0)
    res.update(
        n_h=grid.n_h,
        n_w=grid.n_w,
        image_bytes=3 * side * side,
        source_bytes=3 * grid.n_h * p * grid.n_w * p,  # the source's padded patch copy
        z_bytes=BATCH * LATENT_DIM * grid.n_h * grid.n_w * 4,
        data_s=time.perf_counter() - t0,
    )
    labels = torch.tensor([1])
    model: torch.nn.Module
    if args.method == "patchgd":
        pg_model = build_patchgd_model(BACKBONE, N_CLASSES, out_dim=LATENT_DIM).to(dev)
        model = pg_model
        plan = plan_memory(pg_model, p, BATCH, grid.n_h * grid.n_w, LATENT_DIM, 1 << 50)
        grad_part = BATCH * args.k * plan.per_patch_grad
        fill_part = args.fill_batch * plan.per_patch_fill
        res["plan"] = {
            "fixed": plan.fixed,
            "latent": plan.latent,
            "per_patch_grad": plan.per_patch_grad,
            "per_patch_fill": plan.per_patch_fill,
            "k_part": grad_part,
            "fill_part": fill_part,
            # what plan_memory budgets for this k and fill batch (it fits both against the
            # same room, so the step needs fixed + latent + the larger of the two)
            "estimate": plan.fixed + plan.latent + max(grad_part, fill_part),
        }
        sampler = PermutationSampler()
        rng = np.random.default_rng(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            train_batch(
                pg_model, opt, source, [0], labels, sampler, args.k, args.zeta, args.epsilon,
                rng, F.cross_entropy, args.fill_batch,
            )  # fmt: skip

    else:
        gd_model = build_gd_model(BACKBONE, N_CLASSES, image_size=side, out_dim=LATENT_DIM)
        model = gd_model.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            gd_train_batch(gd_model, opt, source, [0], labels, F.cross_entropy)

    res["param_bytes"] = sum(q.numel() * q.element_size() for q in model.parameters())
    gc.collect()

    # ---- the measured step
    limit = int(args.mem_limit_gb * 1e9)
    rss_before = rss_bytes()
    res["rss_before"] = rss_before
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        alloc_before = torch.cuda.memory_allocated()
    else:
        res["hwm_reset"] = reset_peak_rss()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        vm_before = proc_status_kb("VmSize") * 1024
        cap = vm_before + max(0, limit - rss_before)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    t0 = time.perf_counter()
    try:
        step()
        if cuda:
            torch.cuda.synchronize()
        res["fits"] = True
    except Exception as exc:  # noqa: BLE001 -- an allocation failure is the result we report
        # under RLIMIT_AS some allocation failures surface as other errors (oneDNN: "could not
        # create a primitive"); a peak virtual size of at least half the cap tells them apart
        near_cap = not cuda and proc_status_kb("VmPeak") * 1024 >= 0.5 * cap
        if not (_is_oom(exc) or near_cap):
            raise
        res["fits"] = False
        res["reason"] = f"allocation failed: {str(exc).splitlines()[0][:200]}"
    res["first_step_s"] = time.perf_counter() - t0
    if cuda:
        res["step_peak_bytes"] = torch.cuda.max_memory_allocated() - alloc_before
        res["abs_peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        hwm = (
            peak_rss_bytes()
            if res["hwm_reset"]
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        )
        res["abs_peak_bytes"] = hwm
        res["step_peak_bytes"] = hwm - rss_before
    if not res["fits"]:
        return res

    # ---- timed repeats (the measured step was the warm-up)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    res["repeat_s"] = times
    if times:  # absolute peak over the repeats (RSS keeps freed heap pages, so it can creep up)
        res["repeats_abs_peak_bytes"] = (
            torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        )
    return res
