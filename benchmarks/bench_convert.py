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

Modules: ``benchmarks/convert/`` (workers, checks, measure, report, settings); this file parses
the options and runs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    disk_free_gb,
    log,
    parse_sizes,
    parser,
    start,
    texture_tiles,
    write_json,
)
from benchmarks.convert.measure import bench_size  # noqa: E402
from benchmarks.convert.report import report, summarise  # noqa: E402
from benchmarks.convert.settings import (  # noqa: E402
    NAME,
    OURS,
    TARGET_RSS_MB,
    TARGET_SPEEDUP,
    TARGETS,
)
from benchmarks.convert.workers import worker_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (also the internal ``--worker`` mode)."""
    sizes = "8192,32768,65536"
    quick = "smallest size only (smoke run)"
    ap = parser(__doc__, NAME, sizes, "slide sides (default %(default)s)", quick)
    ap.add_argument("--threads", type=int, default=2, help="workers/threads of both (default 2)")
    ap.add_argument(
        "--naive-max-size",
        type=int,
        default=None,
        help="skip the naive baseline above this side (default: run at every size)",
    )
    ap.add_argument("--keep-stores", action="store_true", help="do not delete the stores")
    ap.add_argument(
        "--no-floor", action="store_true", help="skip the machine-floor passes (floor.py)"
    )
    # worker mode (internal)
    ap.add_argument("--worker", choices=(*OURS, "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark over ``--sizes`` (or, as ``--worker``, one conversion)."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    sizes = parse_sizes(args.sizes)
    if args.quick:
        sizes = [min(sizes)]
    json_path, info = start(args, NAME)
    workdir = Path(args.workdir)
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
                    "speedup_level0_min_where_stricter": {
                        f"{impl}@{size}": t for (impl, size), t in TARGETS.items()
                    },
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
