"""The stores, the models and the timed steps of the step profile.

Each backbone: one warm-up batch, then ``--repeats`` times a plain batch (no wrapping: the
baseline) and an instrumented one (:func:`~benchmarks.step.phases.instrument`); the phase split
is the mean over the instrumented batches, the baseline the mean of the plain ones.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import log
from benchmarks.step.phases import BACKBONE_PHASES, PHASES, instrument
from benchmarks.step.whatif import channels_last_ratios, op_groups


def ensure_stores(workdir: Path, side: int, n: int, patch: int) -> list[str]:
    """``n`` synthetic ``side``-pixel slides converted at ``patch_size=patch`` (cached)."""
    from wsi_patchgd.datasets.synthetic import write_synthetic_slide
    from wsi_patchgd.store import ConvertOptions, convert_slide

    folder = workdir / "step"
    urls = []
    for i in range(n):
        slide = folder / f"synthetic_{side}_{i}.tif"
        url = str(folder / f"synthetic_{side}_{i}_p{patch}.zarr")
        if not slide.exists():
            log(f"writing synthetic slide {side}x{side} -> {slide}")
            write_synthetic_slide(slide, side, seed=100 + i, label=i % 2, n_markers=1)
        conv = convert_slide(str(slide), url, ConvertOptions(patch_size=patch))
        log(f"store {url}: {conv.status}")
        urls.append(url)
    return urls


def profile_backbone(args: argparse.Namespace, backbone: str, urls: list[str]) -> dict[str, Any]:
    """One backbone's step profile: the phase split and the plain step's time."""
    import torch
    import torch.nn.functional as F

    from wsi_patchgd.data import StorePatchSource
    from wsi_patchgd.engine import build_patchgd_model
    from wsi_patchgd.engine.patchgd import train_batch
    from wsi_patchgd.sampling import PermutationSampler

    device = getattr(args, "device", "cpu")
    sync = torch.cuda.synchronize if device == "cuda" else None
    torch.manual_seed(0)
    model = build_patchgd_model(backbone, 2, out_dim=args.latent_dim, weights=None).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    source = StorePatchSource(urls, level=0, patch_size=args.patch)
    images = list(range(len(urls)))
    labels = torch.tensor([i % 2 for i in images])
    tissue = [int(source.grid(i).tissue_indices().size) for i in images]
    grid = source.grid(0)
    log(f"{backbone}: grid {grid.n_h}x{grid.n_w}, tissue patches per image {tissue}")

    def step(seed: int) -> dict[str, Any]:
        res = train_batch(
            model, optimizer, source, images, labels, PermutationSampler(), args.k,
            args.zeta, args.epsilon, np.random.default_rng(seed), F.cross_entropy,
            args.fill_batch_size,
        )  # fmt: skip
        if sync is not None:
            sync()
        source.cancel_prefetch()
        return dict(res)

    t0 = time.perf_counter()
    res = step(0)  # warm-up: allocator, shard indexes, page cache, oneDNN kernels
    log(f"{backbone}: warm-up batch {time.perf_counter() - t0:.2f} s")
    plain: list[float] = []
    runs: list[dict[str, Any]] = []
    stores = [source.store(i) for i in images]
    for r in range(args.repeats):
        t0 = time.perf_counter()
        step(1 + 2 * r)
        plain.append(time.perf_counter() - t0)
        with instrument(model, stores, sync) as clock:
            t0 = time.perf_counter()
            with clock.phase("other"):
                res = step(2 + 2 * r)
            total = time.perf_counter() - t0
        runs.append({"total_s": total, "phases": dict(clock.seconds),
                     "background": dict(clock.background)})  # fmt: skip
        log(f"{backbone}: repeat {r + 1}: plain {plain[-1]:.2f} s, instrumented {total:.2f} s")
    phases = {p: statistics.fmean(run["phases"].get(p, 0.0) for run in runs) for p in PHASES}
    background = {
        k: statistics.fmean(run["background"].get(k, 0.0) for run in runs)
        for k in sorted({k for run in runs for k in run["background"]})
    }
    total = statistics.fmean(run["total_s"] for run in runs)
    backbone_s = sum(phases[p] for p in BACKBONE_PHASES)
    log(f"{backbone}: op-level profile of one more plain batch (torch.profiler)")
    ops = op_groups(lambda: step(1000), device)
    log(f"{backbone}: backbone alone, default layout vs channels_last")
    cl = channels_last_ratios(model, args.patch, args.fill_batch_size, len(images) * args.k, device)
    cl["saves_s"] = phases["fill: backbone forward"] * (1 - cl["fill_forward_ratio"]) + (
        phases["inner: backbone forward"] + phases["backward: backbone"]
    ) * (1 - cl["grad_forward_backward_ratio"])
    cl["saves_share"] = cl["saves_s"] / total
    return {
        "backbone": backbone,
        "images": len(images),
        "grid": [grid.n_h, grid.n_w],
        "tissue_patches": tissue,
        "fill_patches": res["fill_patches"],
        "grad_patches": res["grad_patches"],
        "optimizer_steps": res["optimizer_steps"],
        "plain_step_s": statistics.fmean(plain),
        "plain_step_s_each": plain,
        "instrumented_step_s": total,
        "instrumentation_overhead": total / statistics.fmean(plain) - 1.0,
        "phases_s": phases,
        "background_s": background,
        "backbone_compute_s": backbone_s,
        "backbone_share": backbone_s / total,
        "op_groups_s": ops,
        "channels_last": cl,
        "runs": runs,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``--backbones`` on the same stores."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = getattr(args, "device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    urls = ensure_stores(Path(args.workdir), args.size, args.images, args.patch)
    results = [profile_backbone(args, b, urls) for b in args.backbones]
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "device": device,
            "gpu_name": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "stores": urls, "results": results}  # fmt: skip
