"""Streaming stores from object storage: s3:// behind 20 ms of latency vs the same store local.

A synthetic slide of real tissue (``ConvertOptions()`` defaults, ``--codec`` blosc-lz4) is
converted once; its store is uploaded ``--images`` times to a moto S3 server on 127.0.0.1,
read through a latency-injecting proxy (``wsi_patchgd.testing.proxy``, ``--latency-ms`` per
request, as a real object store's first byte). Three workloads are read through
``StorePatchSource`` exactly as the engine reads (announced, prefetched):

* **random**: reads of k random tissue patches of one image (inner iterations);
* **fill**: every tissue patch of one image in storage order, 64 per read (filling Z);
* **epoch**: several images, batches of 2: fill, then zeta reads of k random patches each.

Modes: local (the baseline, measured in the same run), s3 without a cache, s3 with a cold
shard cache (empty directory), s3 with a warm one (the same directory again, new process
state); for each ``--backends`` (fsspec, obstore). Targets: cold >= 50 %, warm >= 90 % of the
local patches/s.

Usage::

    .venv/bin/python benchmarks/bench_stream.py --quick --out /tmp/bench_stream.json
    .venv/bin/python benchmarks/bench_stream.py          # 16384^2, 3 images, 3 repeats

Modules: ``benchmarks/stream/`` (stores, workloads, measure, report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import log, parser, start, write_json  # noqa: E402
from benchmarks.stream.measure import bench  # noqa: E402
from benchmarks.stream.report import COLD_TARGET, WARM_TARGET, report, targets  # noqa: E402

NAME = "bench_stream"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options."""
    quick = "8192^2 slide, 2 images, 2 repeats (under 2 minutes)"
    ap = parser(__doc__, NAME, "16384", "slide side (first used; default %(default)s)", quick)
    ap.add_argument("--out", dest="json", help="result file (same as --json)")
    ap.add_argument("--codec", default="blosc-lz4", help="store codec (default %(default)s)")
    ap.add_argument("--images", type=int, default=3, help="stores in the epoch workload (3)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added per request (20)")
    ap.add_argument("--backends", default="fsspec,obstore", help="remote backends to measure")
    ap.add_argument("--k", type=int, default=32, help="random patches per read (32)")
    ap.add_argument("--zeta", type=int, default=4, help="random reads per image and batch (4)")
    ap.add_argument("--batch-size", type=int, default=2, help="images per batch (2)")
    ap.add_argument("--fill-bs", type=int, default=64, help="patches per fill read (64)")
    ap.add_argument("--random-reads", type=int, default=40, help="reads in 'random' (40)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode, median (3)")
    ap.add_argument(
        "--read-workers", type=int, default=None, help="prefetch threads for s3:// (default: 8)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.size = int(str(args.sizes).split(",")[0])
    if args.quick:
        args.size, args.images, args.repeats = min(args.size, 8192), min(args.images, 2), 2
        args.random_reads = min(args.random_reads, 20)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    json_path, info = start(args, NAME)
    doc = bench(args)
    doc = {"benchmark": NAME, "machine": info, "args": vars(args),
           "targets_wanted": {"cold_min": COLD_TARGET, "warm_min": WARM_TARGET}, **doc}  # fmt: skip
    doc["targets"] = targets(doc)
    write_json(json_path, doc)
    print()
    print(report(doc), flush=True)
    log(f"JSON: {json_path}")


if __name__ == "__main__":
    main()
