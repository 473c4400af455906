"""Training cost of PatchGD vs standard gradient descent (GD): memory, speed, loader headroom.

Three parts, all with the same backbone (``mobilenet_v2``, ``weights=None``), the same head width
(latent D = 256, the pooled head with 256-channel convolutions), batch size 1, Adam (lr 1e-3),
cross-entropy over 2 classes:

1. **Peak memory of one training step** as the image side grows (default 512 ... 8192).
   PatchGD: ``build_patchgd_model`` + ``train_batch`` with P = 128 px patches, k = 16,
   zeta = epsilon = 4, fill batch 64, every patch tissue. GD: ``GDModel(..., image_size=side)``
   (the whole image at full resolution) + ``gd_train_batch``. The image is an in-memory uint8
   H&E-coloured noise image read through ``TensorPatchSource``; it is built *before* the
   measurement, so the step's memory excludes the data (its size is listed separately). Every
   configuration runs in a fresh subprocess. On the CPU the step's memory is the rise of the
   process's peak RSS over the RSS right before the step (the kernel's high-water mark is reset
   just before the step via ``/proc/self/clear_refs``, so building the data does not hide the
   step's peak), with glibc malloc's mmap threshold fixed at 128 KiB so that freed tensors
   leave RSS at once (see :data:`MEMORY_ENV`); on CUDA it is ``max_memory_allocated`` minus the
   allocation before the step. The first step is measured, so it includes allocating
   gradients and Adam's state.
   GD runs until it no longer fits: above ``--mem-limit-gb`` (16 GB) RSS, enforced in the
   child by ``RLIMIT_AS`` (allocation fails -> "does not fit") and by a watchdog in the parent
   that kills the child above the limit or when the machine runs low on memory; larger GD sizes
   are then skipped. Next to PatchGD's measured peak the table prints ``plan_memory``'s
   estimate for the same k and fill batch, and Z's size (B * D * n_h * n_w * 4 bytes).
2. **Seconds per image** (one whole step incl. filling Z), PatchGD vs GD, at the sizes where
   GD fits, each in another fresh process with the default allocator: a warm-up step, then
   ``--repeats`` (3) timed steps, averaged. Where GD does not fit, PatchGD's single (cold)
   step time is listed.
3. **Loader vs backbone**: a synthetic slide (``write_synthetic_slide``) converted with
   ``ConvertOptions(patch_size=128)``; patches/s that ``StorePatchSource.read`` delivers for
   batches of k random tissue patches (plain, and announced 20 at a time via ``prefetch``)
   and for fill batches of 64 in storage order, vs patches/s the backbone consumes (forward +
   backward on k patches with grad; no-grad fill at batch 64). Requirement: the loader
   delivers >= 2x what the backbone consumes.

Usage::

    .venv/bin/python benchmarks/bench_train.py              # 512,1024,2048,4096,8192
    .venv/bin/python benchmarks/bench_train.py --quick      # 512,1024, 1 repeat (smoke run)
    .venv/bin/python benchmarks/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_WORKDIR,
    REPO,
    default_json,
    describe_machine,
    log,
    machine_info,
    parse_sizes,
    remove,
    write_json,
)
from benchmarks._common import table as _table  # noqa: E402

NAME = "bench_train"
BACKBONE = "mobilenet_v2"
LATENT_DIM = 256
N_CLASSES = 2
BATCH = 1
LOADER_TARGET = 2.0  #: the loader must deliver at least this many times what the backbone eats
DEFAULT_SIZES = "512,1024,2048,4096,8192"
QUICK_SIZES = "512,1024"
MB = 1e6


# --------------------------------------------------------------------------------------------
# memory probes (child side)


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_bytes() -> int:
    return _proc_status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    return _proc_status_kb("VmHWM") * 1024


def synthetic_image(side: int, seed: int = 0) -> Any:
    """uint8 (3, side, side) H&E-coloured noise (pink/purple), made without float temporaries."""
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.empty(3, side, side, dtype=torch.uint8)
    for c, (lo, hi) in enumerate(((150, 250), (60, 200), (130, 235))):
        img[c] = torch.randint(lo, hi, (side, side), generator=g, dtype=torch.uint8)
    return img


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("out of memory", "can't allocate", "cannot allocate", "bad_alloc")
    )


def child_step(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in a fresh process: a measured first step, then timed repeats."""
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
    if args.method == "patchgd":
        model = build_patchgd_model(BACKBONE, N_CLASSES, out_dim=LATENT_DIM).to(dev)
        plan = plan_memory(model, p, BATCH, grid.n_h * grid.n_w, LATENT_DIM, 1 << 50)
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
                model, opt, source, [0], labels, sampler, args.k, args.zeta, args.epsilon,
                rng, F.cross_entropy, args.fill_batch,
            )  # fmt: skip

    else:
        model = build_gd_model(BACKBONE, N_CLASSES, image_size=side, out_dim=LATENT_DIM).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            gd_train_batch(model, opt, source, [0], labels, F.cross_entropy)

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
        vm_before = _proc_status_kb("VmSize") * 1024
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
        near_cap = not cuda and _proc_status_kb("VmPeak") * 1024 >= 0.5 * cap
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


# --------------------------------------------------------------------------------------------
# running a child under a watchdog (parent side)


#: Memory children run glibc malloc with a fixed mmap threshold: every block of 128 KiB or more
#: is its own mapping, returned to the OS when freed, so peak RSS tracks the peak of live
#: allocations (the CPU analogue of ``max_memory_allocated``). With glibc's default (a threshold
#: that rises as blocks are freed), freed memory stays resident and the same step measured
#: +-60 MB from run to run here; with the fixed threshold, +-1 MB. It slows steps down ~2x
#: (an mmap and page faults per allocation), so timings come from separate children with the
#: default allocator.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_child(
    args: argparse.Namespace, method: str, side: int, repeats: int, workdir: Path, mode: str
) -> dict[str, Any]:
    """One configuration in a fresh process under the watchdog; ``mode``: memory or time."""
    import psutil

    name = "GD" if method == "gd" else "PatchGD"
    what = "memory step" if mode == "memory" else f"warm-up + {repeats} timed steps"
    if mode == "time" and repeats == 0:
        what = "one (cold) timed step"
    log(f"{name:<7} {side:>5}: {what} in a fresh process ...")
    out = workdir / f"child_{method}_{side}_{mode}.json"
    remove(out)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--method", method,
        "--size", str(side), "--child-out", str(out), "--device", args.device,
        "--threads", str(args.threads), "--repeats", str(repeats), "--patch", str(args.patch),
        "--k", str(args.k), "--zeta", str(args.zeta), "--epsilon", str(args.epsilon),
        "--fill-batch", str(args.fill_batch), "--mem-limit-gb", str(args.mem_limit_gb),
    ]  # fmt: skip
    limit = args.mem_limit_gb * 1e9
    t0 = time.perf_counter()
    env = dict(os.environ, **(MEMORY_ENV if mode == "memory" else {}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    state = {"peak": 0, "killed": ""}
    stop = threading.Event()

    def watch() -> None:
        try:
            ps = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                return
            state["peak"] = max(state["peak"], rss)
            avail = psutil.virtual_memory().available
            why = ""
            if rss > limit * 1.02:
                why = f"watchdog: RSS {rss / 1e9:.1f} GB > limit {args.mem_limit_gb:g} GB"
            elif avail < 1.0e9:
                why = f"watchdog: machine low on memory ({avail / 1e9:.2f} GB available)"
            if why:
                state["killed"] = why
                proc.kill()
                return
            stop.wait(0.02)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        rc = proc.wait(args.child_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
        state["killed"] = state["killed"] or f"timeout after {args.child_timeout:.0f} s"
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    if out.exists() and rc == 0:
        res = json.loads(out.read_text())
    else:
        reason = state["killed"] or f"child exited with status {rc}"
        if rc is not None and rc < 0 and not state["killed"]:
            reason = f"child killed by signal {-rc} (likely out of memory)"
        n = -(-side // args.patch)
        res = {
            "method": method,
            "side": side,
            "fits": False,
            "reason": reason,
            "n_h": n,
            "n_w": n,
            "z_bytes": BATCH * LATENT_DIM * n * n * 4,
            "image_bytes": 3 * side * side,
        }
        if not state["killed"] and rc not in (None, -9) and rc != 0:
            log(f"  {method} {side}: child failed with status {rc} (see its stderr above)")
            res["error"] = True
    res["sampled_peak_rss_bytes"] = state["peak"]
    res["wall_s"] = wall
    res["mode"] = mode
    res["malloc_env"] = MEMORY_ENV if mode == "memory" else {}
    if not res.get("fits"):
        log(f"{name:<7} {side:>5}: does not fit ({res.get('reason')})")
    elif mode == "memory":
        plan = res.get("plan", {}).get("estimate")
        log(
            f"{name:<7} {side:>5}: step peak {res['step_peak_bytes'] / MB:,.0f} MB"
            + (f" (plan_memory estimate {plan / MB:,.0f} MB)" if plan else "")
            + f", {wall:.0f} s"
        )
    else:
        rep = res.get("repeat_s") or []
        log(
            f"{name:<7} {side:>5}: first step {res['first_step_s']:.2f} s"
            + (f", {np.mean(rep):.2f} s/img over {len(rep)}" if rep else "")
        )
    return res


# --------------------------------------------------------------------------------------------
# part 3: loader vs backbone (in this process)


def bench_loader(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from wsi_patchgd.data.loader import StorePatchSource
    from wsi_patchgd.engine import build_patchgd_model
    from wsi_patchgd.store import ConvertOptions, SlideStore, convert_slide
    from wsi_patchgd.tissue import patch_tissue_fractions

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    side, p, k = args.slide_size, args.patch, args.k
    folder = workdir / "train"
    slide = folder / f"synthetic_{side}.tif"
    store_url = str(folder / f"synthetic_{side}_p{p}.zarr")
    res: dict[str, Any] = {"slide": str(slide), "store": store_url, "slide_side": side}
    if not slide.exists():
        try:
            from wsi_patchgd.datasets.synthetic import write_synthetic_slide
        except ImportError:
            write_synthetic_slide = None  # type: ignore[assignment]
        if write_synthetic_slide is not None:
            log(f"loader: writing synthetic slide {side}x{side} -> {slide}")
            t0 = time.perf_counter()
            write_synthetic_slide(slide, side, seed=7)
            res["slide_write_s"] = time.perf_counter() - t0
        else:
            data = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO.parent / "shared" / "data"))
            slide = data / "slides" / "cmu-1-small-region.svs"
            store_url = str(folder / f"cmu-1-small-region_p{p}.zarr")
            res.update(slide=str(slide), store=store_url, slide_side=None)
    log(f"loader: converting {slide.name} with ConvertOptions(patch_size={p}) -> {store_url}")
    t0 = time.perf_counter()
    conv = convert_slide(str(slide), store_url, ConvertOptions(patch_size=p))
    res["convert"] = {"status": conv.status, "seconds": time.perf_counter() - t0}
    log(f"loader: store {conv.status} in {res['convert']['seconds']:.1f} s")

    src = StorePatchSource([store_url], level=0, patch_size=p)
    grid = src.grid(0)
    st: SlideStore = src.store(0)
    # the stored patch table vs one recomputed from the stored mask (the loader's own formula)
    fractions = patch_tissue_fractions(
        st.tissue_mask(), 1.0 / (st.mask_downsample / st.downsample(0)), p, st.grid_shape(0, p)
    )
    recomputed = np.flatnonzero(fractions.ravel() >= src.tissue_threshold).astype(np.int64)
    stored = grid.tissue_indices()
    res["tissue"] = {
        "grid": [grid.n_h, grid.n_w],
        "stored_table_tissue_patches": int(stored.size),
        "recomputed_tissue_patches": int(recomputed.size),
        "stored_table_matches_mask": bool(np.array_equal(stored, recomputed)),
        "mask_tissue_fraction": st.tissue_fraction,
    }
    if not res["tissue"]["stored_table_matches_mask"]:
        log(
            f"loader: WARNING the store's level-0 patch table marks {stored.size} tissue patches,"
            f" the stored mask gives {recomputed.size} (mask fraction {st.tissue_fraction:.2f});"
            " sampling the patches from the mask instead"
        )
    tissue = recomputed if recomputed.size >= k else stored
    rng = np.random.default_rng(0)

    def rand_batches(n: int) -> list[np.ndarray]:
        return [rng.choice(tissue, size=k, replace=False) for _ in range(n)]

    for idx in rand_batches(4):  # warm: open shards, indexes, page cache
        src.read(0, idx)

    # (a) random k-batches, one read at a time
    batches = rand_batches(args.loader_batches)
    t0 = time.perf_counter()
    for idx in batches:
        src.read(0, idx)
    plain = k * len(batches) / (time.perf_counter() - t0)
    # (a') the same, announced via prefetch (20 reads), then read in order
    batches = rand_batches(20)
    t0 = time.perf_counter()
    src.prefetch([(0, idx) for idx in batches])
    for idx in batches:
        src.read(0, idx)
    prefetched = k * len(batches) / (time.perf_counter() - t0)
    # (a'') fill batches in storage order
    order = src.storage_order(0, tissue)
    fill_chunks = [order[i : i + args.fill_batch] for i in range(0, order.size, args.fill_batch)]
    fill_chunks = [c for c in fill_chunks if c.size == args.fill_batch][: args.loader_batches]
    t0 = time.perf_counter()
    n = 0
    for idx in fill_chunks:
        n += src.read(0, idx).shape[0]
    fill_read = n / max(time.perf_counter() - t0, 1e-9)
    res["loader_patches_per_s"] = {
        "random_k": plain,
        "random_k_prefetch": prefetched,
        "fill_order": fill_read,
    }
    log(
        f"loader: random k={k}: {plain:,.0f} patches/s; with prefetch: {prefetched:,.0f}/s; "
        f"fill order (batch {args.fill_batch}): {fill_read:,.0f}/s"
    )

    # (b) what the backbone consumes
    model = build_patchgd_model(BACKBONE, N_CLASSES, out_dim=LATENT_DIM).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.train()
    x = src.read(0, rand_batches(1)[0])
    times = []
    for i in range(args.backbone_iters + 1):
        t0 = time.perf_counter()
        model.embed(x).sum().backward()
        sync()
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    grad_rate = k / float(np.mean(times))
    model.eval()
    xf = src.read(0, fill_chunks[0]) if fill_chunks else x.repeat(4, 1, 1, 1)
    times = []
    with torch.no_grad():
        for i in range(args.backbone_iters + 1):
            t0 = time.perf_counter()
            model.embed(xf)
            sync()
            if i:
                times.append(time.perf_counter() - t0)
    fill_rate = xf.shape[0] / float(np.mean(times))
    log(f"backbone: grad k={k}: {grad_rate:,.1f} patches/s; fill: {fill_rate:,.1f} patches/s")

    # (c) the inner loop as the engine runs it: announced reads overlapped with fwd+bwd
    model.train()
    batches = rand_batches(args.backbone_iters)
    t0 = time.perf_counter()
    src.prefetch([(0, idx) for idx in batches])
    for idx in batches:
        model.embed(src.read(0, idx)).sum().backward()
        sync()
        model.zero_grad(set_to_none=True)
    overlapped = k * len(batches) / (time.perf_counter() - t0)
    res["backbone_patches_per_s"] = {"grad_k": grad_rate, "fill": fill_rate}
    res["inner_loop_with_loader_patches_per_s"] = overlapped
    res["ratios"] = {
        "random_k_vs_grad": plain / grad_rate,
        "random_k_prefetch_vs_grad": prefetched / grad_rate,
        "fill_order_vs_fill": fill_read / fill_rate,
        "inner_loop_slowdown_vs_backbone_alone": grad_rate / overlapped,
    }
    res["target"] = LOADER_TARGET
    res["pass_grad"] = plain >= LOADER_TARGET * grad_rate
    res["pass_fill"] = fill_read >= LOADER_TARGET * fill_rate
    src.cancel_prefetch()
    return res


# --------------------------------------------------------------------------------------------
# report


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """``_common.table``, which needs at least one row."""
    return _table(headers, rows) if rows else "  (nothing measured)"


def _mb(b: float | None) -> Any:
    return "-" if b is None else b / MB


def memory_table(rows: list[dict[str, Any]], sizes: list[int]) -> tuple[str, list[dict]]:
    by = {(r["method"], r["side"]): r for r in rows}
    out_rows, summary = [], []
    for s in sizes:
        pg, gd = by.get(("patchgd", s)), by.get(("gd", s))
        if pg is None:
            continue
        pg_peak = pg.get("step_peak_bytes") if pg.get("fits") else None
        est = pg.get("plan", {}).get("estimate")
        pg_total = None if pg_peak is None else pg_peak + pg.get("param_bytes", 0)
        if gd is None:
            gd_txt, ratio = "not run", "-"
        elif gd.get("fits"):
            gd_txt = gd["step_peak_bytes"] / MB
            ratio = f"{gd['step_peak_bytes'] / pg_peak:.1f}x" if pg_peak else "-"
        else:
            gd_txt, ratio = "does not fit", "-"
        z = pg["z_bytes"]
        out_rows.append(
            [
                s,
                f"{pg['n_h']}x{pg['n_w']}",
                pg["image_bytes"] / MB,
                z / MB,
                _mb(pg_peak),
                _mb(None if pg_peak is None else pg_peak - z),
                _mb(pg_total),
                _mb(est),
                f"{pg_total / est:.2f}" if pg_total and est else "-",
                gd_txt,
                ratio,
            ]
        )
        summary.append(
            {
                "side": s,
                "cells": pg["n_h"] * pg["n_w"],
                "image_mb": pg["image_bytes"] / MB,
                "z_mb": z / MB,
                "patchgd_step_peak_mb": None if pg_peak is None else pg_peak / MB,
                "patchgd_peak_minus_z_mb": None if pg_peak is None else (pg_peak - z) / MB,
                "patchgd_step_plus_params_mb": None if pg_total is None else pg_total / MB,
                "plan_memory_estimate_mb": None if est is None else est / MB,
                "measured_over_estimate": (pg_total / est) if pg_total and est else None,
                "gd_fits": None if gd is None else bool(gd.get("fits")),
                "gd_step_peak_mb": gd["step_peak_bytes"] / MB if gd and gd.get("fits") else None,
                "gd_reason": None if gd is None or gd.get("fits") else gd.get("reason"),
                "gd_over_patchgd": (gd["step_peak_bytes"] / pg_peak)
                if gd and gd.get("fits") and pg_peak
                else None,
            }
        )
    headers = [
        "side",
        "grid",
        "image MB",
        "Z MB",
        "PatchGD step MB",
        "peak-Z MB",
        "+params MB",
        "plan_memory MB",
        "meas/plan",
        "GD step MB",
        "GD/PatchGD",
    ]
    return table(headers, out_rows), summary


def growth_lines(summary: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """PatchGD's memory growth per added grid cell vs Z's 1 KB per cell (and GD's)."""
    lines: list[str] = []
    doc: dict[str, Any] = {}
    pg = [r for r in summary if r["patchgd_step_peak_mb"] is not None]
    if len(pg) >= 2:
        a, b = pg[0], pg[-1]
        d_cells = b["cells"] - a["cells"]
        d_mem = (b["patchgd_step_peak_mb"] - a["patchgd_step_peak_mb"]) * MB
        d_z = (b["z_mb"] - a["z_mb"]) * MB
        d_pix = (b["side"] ** 2 - a["side"] ** 2) * 3
        doc["patchgd"] = {
            "from_side": a["side"],
            "to_side": b["side"],
            "pixels_factor": (b["side"] / a["side"]) ** 2,
            "peak_growth_mb": d_mem / MB,
            "z_growth_mb": d_z / MB,
            "bytes_per_cell": d_mem / d_cells,
            "z_bytes_per_cell": LATENT_DIM * 4 * BATCH,
            "growth_over_z_growth": d_mem / d_z if d_z else None,
            "growth_over_image_growth": d_mem / d_pix,
        }
        head = (
            f"PatchGD {a['side']} -> {b['side']} ({doc['patchgd']['pixels_factor']:.0f}x the "
            f"pixels): step peak {a['patchgd_step_peak_mb']:.0f} -> "
            f"{b['patchgd_step_peak_mb']:.0f} MB ({d_mem / MB:+.1f} MB) while Z grew by "
            f"{d_z / MB:.2f} MB"
        )
        if abs(d_mem) < 10 * MB:
            lines.append(head + ": flat within the measurement's resolution.")
        else:
            lines.append(
                head + f": {d_mem / d_cells / 1e3:.1f} KB per added {LATENT_DIM}-D cell (Z itself: "
                f"{LATENT_DIM * 4 * BATCH / 1e3:.1f} KB/cell; the rest is Z's clone and the "
                f"head's activations over Z), i.e. {d_mem / d_pix:.2f} bytes per added image byte."
            )
    gd = [r for r in summary if r["gd_step_peak_mb"] is not None]
    if len(gd) >= 2:
        a, b = gd[-2], gd[-1]
        d_mem = (b["gd_step_peak_mb"] - a["gd_step_peak_mb"]) * MB
        d_cells = b["cells"] - a["cells"]
        doc["gd"] = {
            "from_side": a["side"],
            "to_side": b["side"],
            "bytes_per_cell": d_mem / d_cells,
            "growth_over_image_growth": d_mem / ((b["side"] ** 2 - a["side"] ** 2) * 3),
        }
        lines.append(
            f"GD {a['side']} -> {b['side']}: +{d_mem / MB:,.0f} MB, "
            f"{d_mem / d_cells / MB:.2f} MB per {LATENT_DIM}-D cell's worth of pixels "
            f"({doc['gd']['growth_over_image_growth']:.0f} bytes per added image byte)."
        )
    return lines, doc


def speed_table(
    rows: list[dict[str, Any]], mem_rows: list[dict[str, Any]], sizes: list[int]
) -> tuple[str, list[dict]]:
    by = {(r["method"], r["side"]): r for r in rows}
    mem = {(r["method"], r["side"]): r for r in mem_rows}
    out_rows, summary = [], []
    for s in sizes:
        pg, gd = by.get(("patchgd", s)), by.get(("gd", s)) or mem.get(("gd", s))
        if pg is None or not pg.get("fits"):
            continue
        pg_rep = pg.get("repeat_s") or []
        gd_rep = (gd or {}).get("repeat_s") or []
        pg_s = float(np.mean(pg_rep)) if pg_rep else None
        gd_s = float(np.mean(gd_rep)) if gd_rep else None
        ratio = pg_s / gd_s if pg_s and gd_s else None
        out_rows.append(
            [
                s,
                f"{pg_s:.2f}" if pg_s else "-",
                f"{pg['first_step_s']:.2f}",
                f"{gd_s:.2f}" if gd_s else ("does not fit" if gd else "not run"),
                f"{ratio:.2f}" if ratio else "-",
                len(pg_rep),
            ]
        )
        summary.append(
            {
                "side": s,
                "patchgd_s_per_image": pg_s,
                "patchgd_first_step_s": pg["first_step_s"],
                "gd_s_per_image": gd_s,
                "gd_first_step_s": (gd or {}).get("first_step_s"),
                "patchgd_over_gd": ratio,
                "repeats": len(pg_rep),
                "patchgd_repeat_s": pg_rep,
                "gd_repeat_s": gd_rep,
            }
        )
    headers = ["side", "PatchGD s/img", "PatchGD 1st step s", "GD s/img", "PatchGD/GD", "reps"]
    return table(headers, out_rows), summary


def loader_table(ld: dict[str, Any], k: int, fill: int) -> str:
    lr, br = ld["loader_patches_per_s"], ld["backbone_patches_per_s"]
    r = ld["ratios"]
    rows = [
        [f"random k={k} (plain)", lr["random_k"], f"grad fwd+bwd k={k}", br["grad_k"],
         f"{r['random_k_vs_grad']:.1f}x", "PASS" if ld["pass_grad"] else "FAIL"],
        [f"random k={k} (prefetch 20)", lr["random_k_prefetch"], f"grad fwd+bwd k={k}",
         br["grad_k"], f"{r['random_k_prefetch_vs_grad']:.1f}x", ""],
        [f"storage order, {fill}/read", lr["fill_order"], f"no-grad fill batch {fill}",
         br["fill"], f"{r['fill_order_vs_fill']:.1f}x", "PASS" if ld["pass_fill"] else "FAIL"],
    ]  # fmt: skip
    return table(
        [
            "loader",
            "patches/s",
            "backbone",
            "patches/s",
            "loader/backbone",
            f">= {LOADER_TARGET:g}x",
        ],
        rows,
    )


def plot(
    path: Path, mem: list[dict], speed: list[dict], ld: dict | None, title: str, limit_mb: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 3 if ld else 2
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8))
    ax = axes[0]
    sides = [r["side"] for r in mem]
    pg = [(r["side"], r["patchgd_step_peak_mb"]) for r in mem if r["patchgd_step_peak_mb"]]
    gd = [(r["side"], r["gd_step_peak_mb"]) for r in mem if r["gd_step_peak_mb"]]
    est = [(r["side"], r["plan_memory_estimate_mb"]) for r in mem if r["plan_memory_estimate_mb"]]
    if pg:
        ax.plot(*zip(*pg, strict=True), "o-", label="PatchGD step (measured)", color="C0")
    if est:
        ax.plot(*zip(*est, strict=True), "x--", label="plan_memory estimate", color="C0", alpha=0.6)
    if gd:
        ax.plot(*zip(*gd, strict=True), "s-", label="GD step (measured)", color="C3")
    nofit = [r["side"] for r in mem if r["gd_fits"] is False]
    if nofit:
        ax.scatter(nofit, [limit_mb] * len(nofit), marker="^", color="C3", zorder=5,
                   label=f"GD does not fit (> {limit_mb / 1e3:g} GB)")  # fmt: skip
        ax.axhline(limit_mb, color="C3", lw=0.8, ls=":", alpha=0.6)
    ax.plot(sides, [r["z_mb"] for r in mem], ":", color="gray", label="Z (B*D*n_h*n_w*4)")
    ax.plot(sides, [r["image_mb"] for r in mem], "-.", color="green", alpha=0.6,
            label="the image itself (uint8)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("peak memory of one training step (MB)")
    ax.set_title("memory: PatchGD vs GD")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    pgs = [(r["side"], r["patchgd_s_per_image"] or r["patchgd_first_step_s"]) for r in speed]
    gds = [(r["side"], r["gd_s_per_image"]) for r in speed if r["gd_s_per_image"]]
    if pgs:
        ax.plot(*zip(*pgs, strict=True), "o-", color="C0",
                label="PatchGD (k=16, zeta=4); one cold step where GD does not fit")  # fmt: skip
    if gds:
        ax.plot(*zip(*gds, strict=True), "s-", color="C3", label="GD (full resolution)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("seconds per image (one step)")
    ax.set_title("speed")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    if ld:
        ax = axes[2]
        lr, br = ld["loader_patches_per_s"], ld["backbone_patches_per_s"]
        labels = ["loader\nrandom k", "loader\nprefetch", "loader\nfill order", "backbone\ngrad",
                  "backbone\nfill"]  # fmt: skip
        vals = [lr["random_k"], lr["random_k_prefetch"], lr["fill_order"], br["grad_k"], br["fill"]]
        ax.bar(labels, vals, color=["C2", "C2", "C2", "C1", "C1"])
        ax.set_yscale("log")
        ax.set_ylabel("patches / s")
        ax.set_title("loader vs backbone (128 px patches)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# main


def auto_threads(device: str) -> int:
    """Torch threads for a fair CPU measurement on a shared machine.

    On a busy box OpenMP threads that outnumber the free cores spin against other processes
    and a step gets several times slower (measured here: mobilenet_v2 fwd+bwd of 16 patches,
    0.6 s with 1 thread vs 3-7 s with 2 threads at load average 5 on 2 cores), so use the cores
    the load average leaves free, at least one.
    """
    if device != "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help=f"image sides (default {DEFAULT_SIZES})")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: sizes {QUICK_SIZES}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--json", default=None, help="result file (default benchmarks/results/)")
    ap.add_argument("--png", default=None, help="plot file (default: the JSON's name, .png)")
    ap.add_argument(
        "--threads",
        type=int,
        default=-1,
        help="torch threads (-1: the cores left free by the load average, at least 1; "
        "0: torch's default)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 3)")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--zeta", type=int, default=4)
    ap.add_argument("--epsilon", type=int, default=4)
    ap.add_argument("--fill-batch", type=int, default=64)
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="GD 'does not fit' above")
    ap.add_argument("--slide-size", type=int, default=None, help="part 3 slide side (8192)")
    ap.add_argument("--loader-batches", type=int, default=None)
    ap.add_argument("--backbone-iters", type=int, default=None)
    ap.add_argument("--skip-loader", action="store_true", help="parts 1-2 only")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    ap.add_argument("--child-timeout", type=float, default=1200.0)
    # child mode (internal)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=("gd", "patchgd"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.slide_size is None:
        args.slide_size = 4096 if args.quick else 8192
    if args.loader_batches is None:
        args.loader_batches = 10 if args.quick else 40
    if args.backbone_iters is None:
        args.backbone_iters = 2 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        res = child_step(args)
        Path(args.child_out).write_text(json.dumps(res))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    json_path = Path(args.json) if args.json else default_json(NAME, args.quick)
    png_path = Path(args.png) if args.png else json_path.with_suffix(".png")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    info = machine_info()
    info["versions"]["torch"] = torch.__version__
    info["device"] = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({info['cpu_model']})"
    )
    if args.threads < 0:
        args.threads = auto_threads(args.device)
        info["torch_threads_rule"] = "auto: usable cores minus the 1-min load average, >= 1"
    info["torch_threads"] = args.threads or torch.get_num_threads()
    machine = describe_machine(info) + f"; torch {torch.__version__}, device {args.device}"
    machine += f", {info['torch_threads']} torch threads"
    log(machine)
    settings = {
        "backbone": BACKBONE,
        "weights": None,
        "latent_dim": LATENT_DIM,
        "head": "pooled, 4 convs x 256 channels",
        "batch_size": BATCH,
        "classes": N_CLASSES,
        "optimizer": "Adam lr 1e-3",
        "patch": args.patch,
        "k": args.k,
        "zeta": args.zeta,
        "epsilon": args.epsilon,
        "fill_batch": args.fill_batch,
        "sizes": sizes,
        "repeats": args.repeats,
        "mem_limit_gb": args.mem_limit_gb,
        "memory_metric": "CUDA max_memory_allocated - allocated before the step"
        if args.device == "cuda"
        else "peak RSS (VmHWM, reset right before the step) - RSS before the step, "
        "malloc mmap threshold 128 KiB",
        "device": args.device,
        "quick": args.quick,
    }

    # ---- parts 1 and 2: per configuration a memory child (fixed mmap threshold) and a timing
    # child (default allocator), each a fresh process
    mem_rows: list[dict[str, Any]] = []
    time_rows: list[dict[str, Any]] = []
    gd_fits = True
    t_start = time.perf_counter()
    for side in sizes:
        gd_mem = None
        if gd_fits:
            gd_mem = run_child(args, "gd", side, 0, workdir, "memory")
            mem_rows.append(gd_mem)
            if gd_mem.get("fits"):
                if args.repeats:
                    time_rows.append(run_child(args, "gd", side, args.repeats, workdir, "time"))
            else:
                gd_fits = False
                log(f"GD      {side:>5}: no larger GD sizes are tried")
        else:
            log(f"GD      {side:>5}: skipped (a smaller size did not fit)")
        pg_mem = run_child(args, "patchgd", side, 0, workdir, "memory")
        mem_rows.append(pg_mem)
        gd_ok = gd_mem is not None and gd_mem.get("fits")
        if pg_mem.get("fits") and (args.repeats or not gd_ok):
            reps = args.repeats if gd_ok else 0  # where GD does not fit: one cold step
            time_rows.append(run_child(args, "patchgd", side, reps, workdir, "time"))
    log(f"parts 1-2 took {time.perf_counter() - t_start:.0f} s")

    mem_text, mem_summary = memory_table(mem_rows, sizes)
    growth, growth_doc = growth_lines(mem_summary)
    speed_text, speed_summary = speed_table(time_rows, mem_rows, sizes)

    # ---- part 3
    loader = None
    if not args.skip_loader:
        t0 = time.perf_counter()
        loader = bench_loader(args, workdir)
        loader["seconds"] = time.perf_counter() - t0

    info["loadavg_at_end"] = os.getloadavg()
    doc = {
        "benchmark": NAME,
        "machine": info,
        "machine_text": machine,
        "settings": settings,
        "memory": mem_summary,
        "memory_growth": growth_doc,
        "speed": speed_summary,
        "loader": loader,
        "raw_memory": mem_rows,
        "raw_time": time_rows,
        "total_s": time.perf_counter() - t_start,
    }
    write_json(json_path, doc)
    plot(png_path, mem_summary, speed_summary, loader, machine, args.mem_limit_gb * 1e3)

    print()
    print(f"== 1. peak memory of one training step ({settings['memory_metric']}), batch 1,")
    print(
        f"      {BACKBONE}, D={LATENT_DIM}, P={args.patch}, k={args.k}, zeta=eps={args.zeta}, "
        f"fill batch {args.fill_batch}; GD limit {args.mem_limit_gb:g} GB; MB = 10^6 bytes"
    )
    print(mem_text)
    print(
        "  image MB: the uint8 image (held by the data source, not part of the step). "
        "+params: step peak + parameter bytes, comparable to plan_memory (which counts "
        "weights+grads+Adam, Z/head and max(k patches, fill batch))."
    )
    for line in growth:
        print("  " + line)
    print()
    print(f"== 2. seconds per image (mean of {args.repeats} steps after a warm-up step)")
    print(speed_text)
    ratios = [r["patchgd_over_gd"] for r in speed_summary if r["patchgd_over_gd"]]
    if ratios:
        print(
            f"  PatchGD / GD time ratio: {', '.join(f'{x:.2f}' for x in ratios)} "
            "(< 1: PatchGD faster; the paper reports PatchGD 'almost at par' with GD)"
        )
    if loader:
        print()
        print(
            f"== 3. loader vs backbone ({loader['store']}, level 0, {args.patch} px patches; "
            f"backbone on {args.device})"
        )
        print(loader_table(loader, args.k, args.fill_batch))
        t = loader["tissue"]
        if not t["stored_table_matches_mask"]:
            print(
                f"  NOTE: the store's level-0 patch table lists {t['stored_table_tissue_patches']}"
                f" tissue patches of {t['grid'][0]}x{t['grid'][1]}, the stored mask gives "
                f"{t['recomputed_tissue_patches']} (mask tissue fraction "
                f"{t['mask_tissue_fraction']:.2f}); patches here are sampled from the mask."
            )
        print(
            f"  inner loop with the loader (prefetch) overlapped: "
            f"{loader['inner_loop_with_loader_patches_per_s']:,.1f} patches/s, "
            f"{loader['ratios']['inner_loop_slowdown_vs_backbone_alone']:.2f}x the time of the "
            "backbone alone"
        )
        ok = loader["pass_grad"] and loader["pass_fill"]
        print(
            f"  requirement loader >= {LOADER_TARGET:g}x backbone: {'PASS' if ok else 'FAIL'} "
            f"(training k-batches {'PASS' if loader['pass_grad'] else 'FAIL'}, "
            f"filling Z {'PASS' if loader['pass_fill'] else 'FAIL'})"
        )
    print()
    la0, la1 = info["loadavg_at_start"][0], info["loadavg_at_end"][0]
    print(f"machine: {machine}; load average at end {la1:.1f} (start {la0:.1f})")
    print(f"JSON: {json_path}")
    print(f"PNG:  {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
