"""Part 3 of the training benchmark: patches/s the store loader delivers vs the backbone eats.

A synthetic slide (``write_synthetic_slide``) converted with ``ConvertOptions(patch_size=128)``;
patches/s that ``StorePatchSource.read`` delivers for batches of k random tissue patches (plain,
and announced 20 at a time via ``prefetch``) and for fill batches in storage order, vs patches/s
the backbone consumes (forward + backward on k patches with grad; no-grad fill), and the inner
loop with both overlapped. Runs in the benchmark's own process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import log
from benchmarks.train.settings import BACKBONE, LATENT_DIM, LOADER_TARGET, N_CLASSES


def bench_loader(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Loader vs backbone on a ``--slide-size`` synthetic slide's store (built if missing).

    Returns:
        Patches/s of the loader (``loader_patches_per_s``) and the backbone
        (``backbone_patches_per_s``), their ratios, pass/fail against :data:`LOADER_TARGET`,
        the store's tissue table check and the conversion's status.
    """
    import torch

    from wsi_patchgd.data.loader import StorePatchSource
    from wsi_patchgd.datasets.synthetic import write_synthetic_slide
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
        log(f"loader: writing synthetic slide {side}x{side} -> {slide}")
        t0 = time.perf_counter()
        write_synthetic_slide(slide, side, seed=7)
        res["slide_write_s"] = time.perf_counter() - t0
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
