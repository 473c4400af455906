"""Profile one PatchGD training batch on CPU: backbone compute vs reads, Z writes, head, optimizer.

Synthetic slides of ``--sizes`` pixels converted at ``patch_size=--patch``; for each
``--backbones`` (``weights=None``) one ``train_batch`` of ``--images`` images (k, zeta, epsilon,
fill batch as given) is split into exclusive phases by wrapping the names the engine calls and
hooking the model's modules (``benchmarks/step/phases.py``; the package is not changed): read
waits, input normalisation, backbone forward (fill and inner), writes into Z, head forward,
backward (head + Z, backbone), optimizer step, other. The baseline is the plain (unwrapped)
step, measured in the same run. Goal: >= 90 % of the step in backbone compute.

Usage::

    .venv/bin/python benchmarks/bench_step.py --quick      # mobilenet_v2, 1024^2 (< 1 minute)
    .venv/bin/python benchmarks/bench_step.py              # mobilenet_v2 + resnet50, 2048^2

Modules: ``benchmarks/step/`` (phases, measure, report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import log, parser, start, write_json  # noqa: E402
from benchmarks.step.measure import bench  # noqa: E402
from benchmarks.step.report import BACKBONE_TARGET, report  # noqa: E402

NAME = "bench_step"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options."""
    quick = "mobilenet_v2 only, 1024^2 slides, 2 repeats (under a minute)"
    ap = parser(__doc__, NAME, "2048", "slide side (first used; default %(default)s)", quick)
    ap.add_argument("--backbones", default="mobilenet_v2,resnet50", help="torchvision names")
    ap.add_argument("--images", type=int, default=2, help="images per batch (2)")
    ap.add_argument("--patch", type=int, default=128, help="patch side (128)")
    ap.add_argument("--k", type=int, default=16, help="patches per image per inner iteration")
    ap.add_argument("--zeta", type=int, default=2, help="inner iterations (2)")
    ap.add_argument("--epsilon", type=int, default=2, help="iterations per optimizer step (2)")
    ap.add_argument("--fill-batch-size", type=int, default=32, help="patches per fill call")
    ap.add_argument("--latent-dim", type=int, default=256, help="latent width D (256)")
    ap.add_argument("--repeats", type=int, default=3, help="measured batches per backbone (3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="(cpu)")
    args = ap.parse_args(argv)
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.size = int(str(args.sizes).split(",")[0])
    if args.quick:
        args.backbones, args.size, args.repeats = ["mobilenet_v2"], min(args.size, 1024), 2
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables, write the JSON."""
    args = parse_args(argv)
    json_path, info = start(args, NAME)
    doc = {"benchmark": NAME, "machine": info, "args": vars(args),
           "target_backbone_share": BACKBONE_TARGET, **bench(args)}  # fmt: skip
    write_json(json_path, doc)
    print()
    print(report(doc), flush=True)
    log(f"JSON: {json_path}")


if __name__ == "__main__":
    main()
