"""One slide size of the conversion benchmark: each conversion in a measured subprocess, checked.

Every conversion runs as ``bench_convert.py --worker IMPL`` under
:func:`benchmarks._memory.run_measured` (peak RSS of its process tree).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    REPO,
    dir_size_mb,
    disk_free_gb,
    ensure_slide,
    log,
    remove,
)
from benchmarks._memory import run_measured
from benchmarks.convert.checks import (
    check_patches,
    naive_reader,
    ours_reader,
    probe_naive_rate,
    source_pixels,
)
from benchmarks.convert.floor import machine_floor
from benchmarks.convert.settings import N_CHECK, OURS

#: the entry point the conversion workers run (``--worker``)
SCRIPT = REPO / "benchmarks" / "bench_convert.py"


def run_one(impl: str, source: Path, out: Path, threads: int, workdir: Path) -> dict[str, Any]:
    """One conversion (``impl``: ours, ours-jpeg, naive) in a measured subprocess."""
    result = workdir / f"result-{impl}.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--worker",
        impl,
        "--source",
        str(source),
        "--out",
        str(out),
        "--result",
        str(result),
        "--threads",
        str(threads),
    ]
    load = os.getloadavg()
    res = run_measured(cmd, result)
    res["loadavg_before_after"] = [load, os.getloadavg()]
    remove(result)
    return res


def bench_size(
    size: int, args: argparse.Namespace, tiles: list[np.ndarray], naive_rate: float | None
) -> tuple[list[dict[str, Any]], float | None]:
    """Both modes of ours and the naive baseline on the size x size test slide, each checked.

    Args:
        size: slide side.
        args: the benchmark's options.
        tiles: real tissue tiles for building the slide if it is not cached.
        naive_rate: the naive MP/s measured at a smaller size (for the time estimate), or None.

    Returns:
        (one result row per conversion, the naive MP/s now, or ``naive_rate`` if skipped).
    """
    workdir = Path(args.workdir)
    source = ensure_slide(workdir, size, tiles)
    w, h, dims = source_pixels(source)
    level0_mp = w * h / 1e6
    all_mp_source = sum(a * b for a, b in dims) / 1e6
    rows: list[dict[str, Any]] = []
    base = {
        "size": size,
        "source": str(source),
        "source_mb": source.stat().st_size / 1e6,
        "level0_megapixels": level0_mp,
    }

    for impl, codec in OURS.items():
        out = workdir / "convert" / impl
        remove(out)
        log(f"{size}^2: {impl}: converting ({level0_mp:,.0f} MP at level 0, --codec {codec}) ...")
        r = run_one(impl, source, out, args.threads, workdir)
        log(f"{size}^2: {impl}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB; checking")
        diff, tissue = check_patches(source, w, ours_reader(r["store"]), seed=size)
        rows.append(_row(base, impl, r, diff, tissue, dir_size_mb(r["store"])))
        if codec != "jpeg" and not args.no_floor:
            log(f"{size}^2: machine floor: decode, encode, write {rows[-1]['store_mb']:,.0f} MB")
            rows[-1]["floor"] = machine_floor(source, workdir, args.threads, rows[-1]["store_mb"])
        log(
            f"{size}^2: {impl}: max |diff| vs OpenSlide over {N_CHECK} patches = {diff:g} "
            f"({tissue} with tissue); store {rows[-1]['store_mb']:,.0f} MB"
        )
        if not args.keep_stores:
            remove(out)

    # naive
    if args.naive_max_size is not None and size > args.naive_max_size:
        log(f"{size}^2: naive: skipped (--naive-max-size {args.naive_max_size})")
        return rows, naive_rate
    rate = naive_rate or probe_naive_rate(source, args.threads)
    log(
        f"{size}^2: naive: estimated ~{all_mp_source / rate:,.0f} s "
        f"({all_mp_source:,.0f} MP over {len(dims)} levels at ~{rate:.0f} MP/s"
        f"{'' if naive_rate else ', from a probe'})"
    )
    out = workdir / "convert" / "naive.zarr"
    remove(out)
    if disk_free_gb(workdir) < w * h * 3 * 1.4 / 2**30 / 2 + 1:
        log(f"{size}^2: naive: warning: little free disk ({disk_free_gb(workdir):.0f} GB)")
    r = run_one("naive", source, out, args.threads, workdir)
    log(f"{size}^2: naive: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB; checking ...")
    diff, tissue = check_patches(source, w, naive_reader(str(out)), seed=size)
    rows.append(_row(base, "naive", r, diff, tissue, dir_size_mb(out)))
    if not args.keep_stores:
        remove(out)
    return rows, r["megapixels_all_levels"] / r["seconds"]


def _row(
    base: dict[str, Any], impl: str, r: dict[str, Any], diff: float, tissue: int, mb: float
) -> dict[str, Any]:
    """A result row: the slide's facts, the subprocess's timings and RSS, the checks."""
    return {
        **base,
        "impl": impl,
        "seconds": r["seconds"],
        "process_wall_s": r["wall_s"],
        "mp_per_s_level0": base["level0_megapixels"] / r["seconds"],
        "megapixels_all_levels": r["megapixels_all_levels"],
        "mp_per_s_all_levels": r["megapixels_all_levels"] / r["seconds"],
        "levels": r["levels"],
        "peak_rss_mb": r["peak_rss_mb"],
        "peak_rss_tree_sampled_mb": r["peak_rss_tree_mb"],
        "maxrss_self_mb": r.get("maxrss_self_mb"),
        "store_mb": mb,
        "check_max_abs_diff": diff,
        "check_patches": N_CHECK,
        "check_patches_with_tissue": tissue,
        "tissue_step_s": r.get("tissue_s"),
        "stage_seconds": r.get("stage_seconds"),
        "loadavg_before_after": r["loadavg_before_after"],
    }
