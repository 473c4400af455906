"""Random patch reads: our store (local and s3://) vs OpenSlide ``read_region`` on the source.

On a 32768^2 JPEG-tiled pyramidal TIFF textured with real tissue (built once and cached, as in
``bench_convert``) and its store (``ConvertOptions()`` defaults), random 256^2 tissue patches of
level 0 are read:

* **ours, batch 64**: ``SlideStore(url).read_patches(0, rows, cols)`` with 64 patches per call
  (the batched path the trainer uses; shard indexes are cached after their first read); also
  **batch 1** (one patch per call: latency);
* **OpenSlide**: ``read_region`` of the same patches one at a time, and from a 2-thread pool;
* **floor**: the same chunks read by the simplest possible code (``os.pread`` of the chunk, the
  shard index read once per shard, the codec's decode, one thread), i.e. what the storage
  layout itself costs;
* **ours on s3://**: the store uploaded to a local ``moto_server`` (S3 API on 127.0.0.1), read
  through ``SlideStore("s3://...", storage_options=...)``.

All reads go through a warm OS page cache (the files were just written or read). Each method
reads the same patch positions; ``--repeats`` fresh position sets, median reported. If ours is
below the target, a per-thread cProfile of the batched path (all threads, zarr's event loop and
codec threads included) is printed and stored in the JSON.

Usage::

    .venv/bin/python benchmarks/bench_read.py            # 32768^2
    .venv/bin/python benchmarks/bench_read.py --quick    # 8192^2, fewer patches (smoke run)

Modules: ``benchmarks/read/`` (stores, readers, timing, measure, s3, profiling, report,
settings); this file parses the options and runs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    parse_sizes,
    parser,
    start,
    write_json,
)
from benchmarks.read.measure import bench  # noqa: E402
from benchmarks.read.profiling import profile_main  # noqa: E402
from benchmarks.read.report import report  # noqa: E402
from benchmarks.read.settings import NAME, TARGET_SPEEDUP  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (also the internal ``--worker profile`` mode)."""
    quick = "8192^2 slide and fewer patches (smoke run)"
    ap = parser(__doc__, NAME, "32768", "slide side (first used; default %(default)s)", quick)
    ap.add_argument("--slide", default=None, help="use this slide file instead of a synthetic one")
    ap.add_argument("--batch", type=int, default=64, help="patches per batched call (64)")
    ap.add_argument("--batches", type=int, default=20, help="batches per repeat (20)")
    ap.add_argument("--single", type=int, default=256, help="patches read one per call (256)")
    ap.add_argument("--s3-batches", type=int, default=5, help="batches per repeat on s3 (5)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh position sets (3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-s3", action="store_true", help="skip the s3:// measurement")
    ap.add_argument("--profile", action="store_true", help="profile even if the target is met")
    ap.add_argument("--keep-stores", action="store_true", help="keep a store this run built")
    ap.add_argument("--worker", choices=("profile",), help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark on the first of ``--sizes`` (or, as ``--worker``, the profiler)."""
    args = parse_args(argv)
    if args.worker == "profile":
        profile_main(args)
        return
    sizes = parse_sizes(args.sizes)
    size = sizes[0]
    if args.quick:
        size = min(size, 8192)
        args.batches = min(args.batches, 4)
        args.single = min(args.single, 64)
        args.s3_batches = min(args.s3_batches, 2)
        args.repeats = min(args.repeats, 2)
    json_path, info = start(args, NAME)
    doc = bench(args, size)
    doc = {
        "benchmark": NAME,
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "store", "result")},
        "targets": {"ours_batch_over_openslide_min": TARGET_SPEEDUP},
        **doc,
    }
    write_json(json_path, doc)
    print()
    print(report(doc), flush=True)
    if "profile" in doc:
        print("\nprofile of the batched path:\n" + doc["profile"], flush=True)
    print(f"\nJSON: {json_path}", flush=True)


if __name__ == "__main__":
    main()
