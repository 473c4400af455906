"""Conversion throughput and memory: our converter vs a naive dask + zarr conversion.

For every size (default 8192^2, 32768^2, 65536^2) a JPEG-tiled pyramidal TIFF textured with
real tissue (tiles of the shared CMU-1 and TCGA slides, placed on glass like a real slide) is
built once and cached in the work folder. Then, each in its own subprocess (so that its peak RSS
is its own):

* **ours**: ``wsi_patchgd.store.convert_many([slide], out, ConvertOptions(), workers=2)``
  (sharded Zarr v3, blosc-lz4, levels down to 512 px, tissue mask and patch tables);
* **naive**: for every level of the OpenSlide pyramid, ``dask.array.from_array`` over an object
  whose ``__getitem__`` calls OpenSlide ``read_region`` (1024^2 chunks), written with
  ``da.to_zarr`` to a Zarr v3 array with ``ZstdCodec(level=3)``, dask's threaded scheduler with
  2 threads — what a reasonable person writes first.

Reported per size: level-0 megapixels per second (level-0 pixels of the source / conversion
seconds), all-levels megapixels per second (every pixel written, all levels / seconds), peak
RSS of the process tree, store size on disk, and the ratio ours/naive. Each conversion is checked
against OpenSlide on 20 random 256^2 patches of level 0 (must be identical).

Usage::

    .venv/bin/python benchmarks/bench_convert.py              # 8192,32768,65536
    .venv/bin/python benchmarks/bench_convert.py --quick      # smallest size only (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_WORKDIR,
    default_json,
    describe_machine,
    dir_size_mb,
    disk_free_gb,
    ensure_slide,
    log,
    machine_info,
    own_rusage,
    parse_sizes,
    remove,
    run_measured,
    table,
    texture_tiles,
    write_json,
)

NAME = "bench_convert"
TARGET_SPEEDUP = 5.0
TARGET_RSS_MB = 500.0
NAIVE_CHUNK = 1024
N_CHECK = 20
CHECK_PATCH = 256
#: our two modes: the default lossless re-encode, and --codec jpeg (source JPEG tiles kept)
OURS = {"ours": "blosc-lz4", "ours-jpeg": "jpeg"}


# --------------------------------------------------------------------------------------------
# the two conversions (each runs in a subprocess)


def convert_ours(source: str, out: str, workers: int, codec: str = "blosc-lz4") -> dict[str, Any]:
    """Our converter, exactly as a user calls it (``convert --codec CODEC``)."""
    from wsi_patchgd.store import ConvertOptions, convert_many, store_name

    t0 = time.perf_counter()
    (res,) = convert_many([source], out, ConvertOptions(codec=codec), workers=workers, quiet=True)
    seconds = time.perf_counter() - t0
    if res.status != "ok":
        raise RuntimeError(f"our conversion of {source} failed: {res.status} {res.reason}")
    return {
        "seconds": seconds,
        "store": str(Path(out) / store_name(source)),
        "megapixels_all_levels": res.megapixels,
        "levels": res.levels,
        "tissue_s": res.timings.get("tissue"),
        "stage_seconds": res.timings,  # plan, lock, create, shards, tissue, finish
    }


class OpenSlideLevel:
    """One OpenSlide level as an array-like for ``dask.array.from_array`` (naive baseline)."""

    def __init__(self, slide: Any, level: int) -> None:
        self.slide = slide
        self.level = level
        self.downsample = slide.level_downsamples[level]
        w, h = slide.level_dimensions[level]
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[:, :, cs]
        loc = (int(x0 * self.downsample), int(y0 * self.downsample))
        img = self.slide.read_region(loc, self.level, (x1 - x0, y1 - y0))
        return np.asarray(img.convert("RGB"))[:, :, cs]


def convert_naive(source: str, out: str, threads: int) -> dict[str, Any]:
    """The straightforward dask + zarr conversion of every OpenSlide level."""
    import dask
    import dask.array as da
    import openslide
    from zarr.codecs import ZstdCodec

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(source)
    n_levels = slide.level_count
    pixels = 0
    with dask.config.set(scheduler="threads", num_workers=threads):
        for level in range(n_levels):
            src = OpenSlideLevel(slide, level)
            arr = da.from_array(src, chunks=(NAIVE_CHUNK, NAIVE_CHUNK, 3))
            da.to_zarr(arr, out, component=str(level), compressors=ZstdCodec(level=3))
            pixels += src.shape[0] * src.shape[1]
    slide.close()
    return {
        "seconds": time.perf_counter() - t0,
        "store": out,
        "megapixels_all_levels": pixels / 1e6,
        "levels": n_levels,
    }


def worker_main(args: argparse.Namespace) -> None:
    """``--worker ours|naive``: run one conversion and write its result JSON."""
    if args.worker in OURS:
        res = convert_ours(args.source, args.out, args.threads, OURS[args.worker])
    else:
        res = convert_naive(args.source, args.out, args.threads)
    res.update(own_rusage())
    Path(args.result).write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------
# checks and estimates (parent)


def check_patches(source: Path, size: int, read: Any, seed: int) -> tuple[float, int]:
    """Max |difference| of ``read(x, y)`` (256^2 RGB) vs OpenSlide over N_CHECK random patches.

    Half the patches lie on the patch grid, half at arbitrary offsets (across chunk edges).
    Returns (max difference, number of patches holding tissue-like pixels).
    """
    import openslide

    rng = np.random.default_rng(seed)
    p = CHECK_PATCH
    worst = 0.0
    tissue = 0
    with openslide.OpenSlide(str(source)) as slide:
        for i in range(N_CHECK):
            if i % 2 == 0:
                x = int(rng.integers(0, size // p)) * p
                y = int(rng.integers(0, size // p)) * p
            else:
                x, y = (int(v) for v in rng.integers(0, size - p, 2))
            ref = np.asarray(slide.read_region((x, y), 0, (p, p)).convert("RGB"))
            got = read(x, y)
            worst = max(worst, float(np.abs(ref.astype(np.int16) - got.astype(np.int16)).max()))
            tissue += int((ref.min(axis=2) < 200).mean() > 0.1)
    return worst, tissue


def ours_reader(store: str) -> Any:
    from wsi_patchgd.store import SlideStore

    s = SlideStore(store)
    return lambda x, y: s.read_region(0, x, y, CHECK_PATCH, CHECK_PATCH)


def naive_reader(store: str) -> Any:
    import zarr

    z = zarr.open_array(store, path="0", mode="r")
    return lambda x, y: np.asarray(z[y : y + CHECK_PATCH, x : x + CHECK_PATCH, :])


def source_pixels(source: Path) -> tuple[int, int, list[tuple[int, int]]]:
    import openslide

    with openslide.OpenSlide(str(source)) as s:
        dims = list(s.level_dimensions)
    w, h = dims[0]
    return w, h, dims


def probe_naive_rate(source: Path, threads: int) -> float:
    """A quick estimate of the naive MP/s: time a few 1024^2 read_region + zstd-3 encodes."""
    import openslide
    from numcodecs import Zstd

    codec = Zstd(level=3)
    with openslide.OpenSlide(str(source)) as slide:
        w, h = slide.dimensions
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        n = 4
        for _ in range(n):
            x = int(rng.integers(0, max(1, w - NAIVE_CHUNK)))
            y = int(rng.integers(0, max(1, h - NAIVE_CHUNK)))
            a = np.asarray(slide.read_region((x, y), 0, (NAIVE_CHUNK, NAIVE_CHUNK)).convert("RGB"))
            codec.encode(np.ascontiguousarray(a))
        dt = time.perf_counter() - t0
    return n * NAIVE_CHUNK * NAIVE_CHUNK / 1e6 / dt * threads  # optimistic: perfect scaling


# --------------------------------------------------------------------------------------------
# the benchmark (parent)


def run_one(impl: str, source: Path, out: Path, threads: int, workdir: Path) -> dict[str, Any]:
    result = workdir / f"result-{impl}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
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


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        naive = next((r for r in rows if r["size"] == size and r["impl"] == "naive"), None)
        for impl in OURS:
            ours = next((r for r in rows if r["size"] == size and r["impl"] == impl), None)
            if ours is None:
                continue
            s: dict[str, Any] = {"size": size, "impl": impl, "codec": OURS[impl]}
            s["ours_peak_rss_mb"] = ours["peak_rss_mb"]
            s["rss_target_met"] = ours["peak_rss_mb"] < TARGET_RSS_MB
            s["ours_max_abs_diff_vs_openslide"] = ours["check_max_abs_diff"]
            s["ours_identical_to_openslide"] = ours["check_max_abs_diff"] == 0
            if naive:
                s["speedup_level0"] = ours["mp_per_s_level0"] / naive["mp_per_s_level0"]
                s["speedup_all_levels"] = ours["mp_per_s_all_levels"] / naive["mp_per_s_all_levels"]
                s["rss_ratio_naive_over_ours"] = naive["peak_rss_mb"] / ours["peak_rss_mb"]
                s["store_size_ratio_ours_over_naive"] = ours["store_mb"] / naive["store_mb"]
                s["speed_target_met"] = s["speedup_level0"] >= TARGET_SPEEDUP
            out.append(s)
    return out


def report(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    headers = [
        "size",
        "impl",
        "levels",
        "seconds",
        "tissue s",
        "L0 MP/s",
        "all-lvl MP/s",
        "peak RSS MB",
        "store MB",
        "max|diff|",
    ]
    body = [
        [
            f"{r['size']}^2",
            r["impl"],
            r["levels"],
            r["seconds"],
            "-" if r.get("tissue_step_s") is None else r["tissue_step_s"],
            r["mp_per_s_level0"],
            r["mp_per_s_all_levels"],
            r["peak_rss_mb"],
            r["store_mb"],
            r["check_max_abs_diff"],
        ]
        for r in rows
    ]
    lines = [table(headers, body), ""]
    for s in summary:
        parts = [f"{s['size']}^2 {s['impl']} (--codec {s['codec']}):"]
        if "speedup_level0" in s:
            ok = "met" if s["speed_target_met"] else "NOT met"
            parts.append(
                f"speed ours/naive = {s['speedup_level0']:.1f}x "
                f"(target >= {TARGET_SPEEDUP:.0f}x: {ok});"
            )
            parts.append(f"store size ours/naive = {s['store_size_ratio_ours_over_naive']:.2f};")
        if "ours_peak_rss_mb" in s:
            ok = "met" if s["rss_target_met"] else "NOT met"
            parts.append(
                f"ours peak RSS {s['ours_peak_rss_mb']:.0f} MB "
                f"(target < {TARGET_RSS_MB:.0f} MB: {ok});"
            )
            parts.append(
                "pixels identical to OpenSlide"
                if s["ours_identical_to_openslide"]
                else f"max |diff| vs OpenSlide {s['ours_max_abs_diff_vs_openslide']:g}"
            )
        lines.append(" ".join(parts))
    lines += [
        "",
        "L0 MP/s = level-0 pixels of the source / conversion seconds (same numerator for both);",
        "all-lvl MP/s = pixels of every level written / seconds (ours: levels down to 512 px;",
        "naive: the source's own levels). Seconds are timed inside each subprocess around the",
        "conversion call; peak RSS covers the whole subprocess (interpreter and imports included).",
        "tissue s = ours' tissue mask + patch tables step, included in seconds (the JSON rows",
        "carry ours' seconds for every stage of the conversion in stage_seconds).",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="8192,32768,65536", help="slide sides (default %(default)s)")
    ap.add_argument(
        "--workdir",
        default=str(DEFAULT_WORKDIR),
        help="slides and stores go here (default %(default)s)",
    )
    ap.add_argument(
        "--json", default=None, help=f"result file (default benchmarks/results/{NAME}.json)"
    )
    ap.add_argument("--quick", action="store_true", help="smallest size only (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="workers/threads of both (default 2)")
    ap.add_argument(
        "--naive-max-size",
        type=int,
        default=None,
        help="skip the naive baseline above this side (default: run at every size)",
    )
    ap.add_argument("--keep-stores", action="store_true", help="do not delete the stores")
    # worker mode (internal)
    ap.add_argument("--worker", choices=(*OURS, "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    sizes = parse_sizes(args.sizes)
    if args.quick:
        sizes = [min(sizes)]
    json_path = Path(args.json) if args.json else default_json(NAME, args.quick)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    log(
        f"sizes {sizes}, workdir {workdir} ({disk_free_gb(workdir):.0f} GB free), "
        f"{args.threads} threads each"
    )
    log("extracting real tissue tiles ...")
    tiles = texture_tiles()
    rows: list[dict[str, Any]] = []
    naive_rate: float | None = None
    t0 = time.perf_counter()
    for size in sizes:
        new, naive_rate = bench_size(size, args, tiles, naive_rate)
        rows += new
        summary = summarise(rows)
        write_json(
            json_path,
            {  # after every size, so a long run leaves partial results
                "benchmark": NAME,
                "machine": info,
                "args": {
                    k: v
                    for k, v in vars(args).items()
                    if k not in ("worker", "source", "out", "result")
                },
                "targets": {
                    "speedup_level0_min": TARGET_SPEEDUP,
                    "ours_peak_rss_mb_max": TARGET_RSS_MB,
                },
                "ours": "wsi_patchgd.store.convert_many(ConvertOptions(), workers=threads)",
                "ours-jpeg": "wsi_patchgd.store.convert_many(ConvertOptions(codec='jpeg'), "
                "workers=threads)",
                "naive": "dask.array.from_array(OpenSlide read_region, 1024^2 chunks) -> "
                "da.to_zarr(zarr v3, ZstdCodec(level=3)), threaded scheduler",
                "rows": rows,
                "summary": summary,
                "total_seconds": time.perf_counter() - t0,
            },
        )
    print()
    print(report(rows, summarise(rows)), flush=True)
    print(f"\nJSON: {json_path}", flush=True)


if __name__ == "__main__":
    main()
