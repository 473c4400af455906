"""One slide's read measurement: ours (local, both codecs), OpenSlide, the floor, s3://."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import dir_size_mb, ensure_slide, log, remove, texture_tiles
from benchmarks.read.profiling import run_profile
from benchmarks.read.readers import FloorReader, openslide_reader
from benchmarks.read.s3 import bench_s3
from benchmarks.read.settings import PATCH, TARGET_SPEEDUP
from benchmarks.read.stores import find_or_build_store, tissue_positions
from benchmarks.read.timing import time_batched, time_single


def bench(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Every reader on the same random tissue patches of one slide, ``--repeats`` times.

    Returns:
        The result document's body: patches/s per method (median and all), ratios, the pixel
        checks against OpenSlide, the s3:// part and, below the target, a profile.
    """
    import openslide

    from wsi_patchgd.store import SlideStore

    workdir = Path(args.workdir)
    slide_file = Path(args.slide) if args.slide else ensure_slide(workdir, size, texture_tiles())
    store_path, built = find_or_build_store(slide_file, workdir)
    store = SlideStore(store_path)
    jpeg_path, jpeg_built = find_or_build_store(slide_file, workdir, "jpeg")
    jstore = SlideStore(jpeg_path)
    n = args.batch * args.batches
    rng = np.random.default_rng(args.seed)
    results: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        results.setdefault(name, []).append(v)

    osl = openslide.OpenSlide(str(slide_file))
    os_read = openslide_reader(osl)
    try:
        floor: FloorReader | None = FloorReader(store_path)
    except (ValueError, KeyError, OSError) as exc:
        log(f"floor: not measured ({exc})")
        floor = None

    # warm-up: threads, metadata, page cache of both files
    wr, wc = tissue_positions(store, args.batch, rng)
    store.read_patches(0, wr, wc)
    for r, c in zip(wr, wc, strict=True):
        os_read(r, c)
    # correctness of what we time: our patches equal OpenSlide's
    got = store.read_patches(0, wr[:8], wc[:8]).transpose(0, 2, 3, 1)
    ref = np.stack([os_read(r, c) for r, c in zip(wr[:8], wc[:8], strict=True)])
    max_diff = int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max())
    log(f"check: max |ours - OpenSlide| over 8 patches = {max_diff}")
    jstore.read_patches(0, wr, wc)
    jgot = jstore.read_patches(0, wr[:8], wc[:8]).transpose(0, 2, 3, 1)
    jpeg_diff = int(np.abs(jgot.astype(np.int16) - ref.astype(np.int16)).max())
    log(f"check: max |ours (--codec jpeg) - OpenSlide| over 8 patches = {jpeg_diff}")
    if floor is not None:
        fl = np.stack([floor.read(r, c) for r, c in zip(wr[:8], wc[:8], strict=True)])
        if not np.array_equal(fl.transpose(0, 2, 3, 1), got):
            log("floor: its chunks differ from SlideStore's; not measured")
            floor = None
    load_before = os.getloadavg()

    for rep in range(args.repeats):
        rows, cols = tissue_positions(store, n, rng)
        log(f"repeat {rep + 1}/{args.repeats}: {n} random tissue patches")
        add(
            "ours_batch",
            time_batched(lambda r, c: store.read_patches(0, r, c), rows, cols, args.batch),
        )
        add(
            "ours_jpeg_batch",
            time_batched(lambda r, c: jstore.read_patches(0, r, c), rows, cols, args.batch),
        )
        m = min(n, args.single)
        add(
            "ours_single",
            time_batched(lambda r, c: store.read_patches(0, r, c), rows[:m], cols[:m], 1),
        )
        add("openslide", time_single(os_read, rows, cols))
        add("openslide_2threads", time_single(os_read, rows, cols, threads=2))
        if floor is not None:
            add("floor", time_single(floor.read, rows, cols))
        log("  " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()))
    osl.close()

    s3: dict[str, Any] = {}
    if not args.no_s3:
        s3 = bench_s3(store_path, store, args, rng)
        for k in ("ours_s3_batch", "ours_s3_single"):
            if k in s3:
                results[k] = s3.pop(k)

    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["ours_batch"] / med["openslide"]
    doc: dict[str, Any] = {
        "size": size,
        "slide": str(slide_file),
        "store": store_path,
        "store_mb": dir_size_mb(store_path),
        "patch": PATCH,
        "batch": args.batch,
        "patches_per_repeat": n,
        "repeats": args.repeats,
        "check_max_abs_diff": max_diff,
        "check_max_abs_diff_jpeg": jpeg_diff,
        "store_jpeg_mb": dir_size_mb(jpeg_path),
        "ratio_ours_jpeg_batch_over_openslide": med["ours_jpeg_batch"] / med["openslide"],
        "patches_per_s_median": med,
        "patches_per_s_all": results,
        "ratio_ours_batch_over_openslide": ratio,
        "ratio_ours_batch_over_openslide_2threads": med["ours_batch"] / med["openslide_2threads"],
        "ratio_ours_single_over_openslide": med["ours_single"] / med["openslide"],
        "target_met": ratio >= TARGET_SPEEDUP,
        "latency_ms_ours_single": 1000.0 / med["ours_single"],
        "latency_ms_openslide": 1000.0 / med["openslide"],
        "s3": s3,
        "loadavg_before_after": [load_before, load_after],
    }
    if "floor" in med:
        doc["ratio_ours_batch_over_floor"] = med["ours_batch"] / med["floor"]
    if ratio < TARGET_SPEEDUP or args.profile:
        log("profiling the batched path (cProfile in every thread) ...")
        doc["profile"] = run_profile(store_path, workdir, args.batch, max(4, args.batches // 2))
    for path, was_built in ((store_path, built), (jpeg_path, jpeg_built)):
        if was_built and not args.keep_stores:
            remove(path)
            log(f"store: removed {path}")
    return doc
