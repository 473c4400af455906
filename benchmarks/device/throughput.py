"""Patches/s of the read path (a Zarr store made here) vs patches/s the backbone consumes.

The loader part is the training benchmark's (:func:`benchmarks.train.loader.bench_loader`): a
``--slide-size`` synthetic slide (``write_synthetic_slide``) converted with
``ConvertOptions(patch_size=--patch)``, then ``StorePatchSource.read`` of random k-batches
(plain and announced via ``prefetch``) and fill batches in storage order, the backbone's fp32
forward + backward beside it, and the engine's inner loop with both overlapped. Here the
backbone is also timed per dtype (fp32, and bf16 under ``torch.autocast``) on uint8 patches
of the same shape, host to device copy included as in the engine: forward + backward of k
patches (the inner iterations) and no-grad forward of a fill batch (filling Z).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks._common import log
from benchmarks.device.settings import torch_dtype
from benchmarks.train.loader import bench_loader
from benchmarks.train.settings import BACKBONE, LATENT_DIM, N_CLASSES


def _timed(fn: Any, iters: int, sync: Any) -> float:
    """Mean seconds of ``fn()`` over ``iters`` calls after one warm-up call."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def backbone_rates(args: argparse.Namespace, dtype: str) -> dict[str, float]:
    """Patches/s of the backbone: forward + backward of k patches, no-grad fill batches."""
    import torch

    from wsi_patchgd.engine import build_patchgd_model, maybe_autocast

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_patchgd_model(BACKBONE, N_CLASSES, out_dim=LATENT_DIM).to(dev)
    g = torch.Generator().manual_seed(0)
    p = args.patch
    xg = torch.randint(0, 256, (args.k, 3, p, p), generator=g, dtype=torch.uint8)
    xf = torch.randint(0, 256, (args.fill_batch, 3, p, p), generator=g, dtype=torch.uint8)
    autocast = torch_dtype(dtype)

    def grad() -> None:
        with maybe_autocast(dev, autocast):
            out = model.embed(xg)
        out.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def fill() -> None:
        with torch.no_grad(), maybe_autocast(dev, autocast):
            model.embed(xf)

    model.train()
    grad_s = _timed(grad, args.backbone_iters, sync)
    model.eval()
    fill_s = _timed(fill, args.backbone_iters, sync)
    return {"grad_k": args.k / grad_s, "fill": args.fill_batch / fill_s}


def run_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The loader (``bench_loader``) and the backbone per dtype; their ratios.

    Returns:
        ``loader`` (``bench_loader``'s result), ``backbone_patches_per_s`` per dtype and
        ``loader_over_backbone`` per dtype (random k-batch reads over forward + backward of k,
        fill-order reads over no-grad fill batches; below 1 the backbone waits for the reads).
    """
    t0 = time.perf_counter()
    ns = argparse.Namespace(
        device=args.device, threads=args.threads, slide_size=args.slide_size, patch=args.patch,
        k=args.k, fill_batch=args.fill_batch, loader_batches=args.loader_batches,
        backbone_iters=args.backbone_iters,
    )  # fmt: skip
    loader = bench_loader(ns, workdir)
    backbone = {}
    for dtype in args.dtypes:
        backbone[dtype] = backbone_rates(args, dtype)
        log(
            f"backbone {dtype}: grad k={args.k}: {backbone[dtype]['grad_k']:,.0f} patches/s; "
            f"fill {args.fill_batch}: {backbone[dtype]['fill']:,.0f} patches/s"
        )
    reads = loader["loader_patches_per_s"]
    ratios = {
        dtype: {
            "random_k_vs_grad": reads["random_k"] / rates["grad_k"],
            "random_k_prefetch_vs_grad": reads["random_k_prefetch"] / rates["grad_k"],
            "fill_order_vs_fill": reads["fill_order"] / rates["fill"],
        }
        for dtype, rates in backbone.items()
    }
    return {
        "loader": loader,
        "backbone_patches_per_s": backbone,
        "loader_over_backbone": ratios,
        "inner_loop_with_loader_patches_per_s": loader["inner_loop_with_loader_patches_per_s"],
        "seconds": time.perf_counter() - t0,
    }
