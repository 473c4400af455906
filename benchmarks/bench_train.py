"""Training cost of PatchGD vs standard gradient descent (GD): memory, speed, loader headroom.

Three parts, all with the same backbone (``mobilenet_v2``, ``weights=None``), the same head width
(latent D = 256, the pooled head with 256-channel convolutions), batch size 1, Adam (lr 1e-3),
cross-entropy over 2 classes:

1. **Peak memory of one training step** as the image side grows (default 512 ... 8192).
   PatchGD: ``build_patchgd_model`` + ``train_batch`` with P = 128 px patches, k = 16,
   zeta = epsilon = 4, fill batch 64, every patch tissue. GD: ``GDModel(..., image_size=side)``
   (the whole image at full resolution) + ``gd_train_batch``. The image is an in-memory uint8
   H&E-coloured noise image read through ``TensorPatchSource``; it is built *before* the
   measurement, so the step's memory excludes the data (its size is listed separately). Every
   configuration runs in a fresh subprocess. On the CPU the step's memory is the rise of the
   process's peak RSS over the RSS right before the step (the kernel's high-water mark is reset
   just before the step via ``/proc/self/clear_refs``, so building the data does not hide the
   step's peak), with glibc malloc's mmap threshold fixed at 128 KiB so that freed tensors
   leave RSS at once (see :data:`MEMORY_ENV`); on CUDA it is ``max_memory_allocated`` minus the
   allocation before the step. The first step is measured, so it includes allocating
   gradients and Adam's state.
   GD runs until it no longer fits: above ``--mem-limit-gb`` (16 GB) RSS, enforced in the
   child by ``RLIMIT_AS`` (allocation fails -> "does not fit") and by a watchdog in the parent
   that kills the child above the limit or when the machine runs low on memory; larger GD sizes
   are then skipped. Next to PatchGD's measured peak the table prints ``plan_memory``'s
   estimate for the same k and fill batch, and Z's size (B * D * n_h * n_w * 4 bytes).
2. **Seconds per image** (one whole step incl. filling Z), PatchGD vs GD, at the sizes where
   GD fits, each in another fresh process with the default allocator: a warm-up step, then
   ``--repeats`` (3) timed steps, averaged. Where GD does not fit, PatchGD's single (cold)
   step time is listed.
3. **Loader vs backbone**: a synthetic slide (``write_synthetic_slide``) converted with
   ``ConvertOptions(patch_size=128)``; patches/s that ``StorePatchSource.read`` delivers for
   batches of k random tissue patches (plain, and announced 20 at a time via ``prefetch``)
   and for fill batches of 64 in storage order, vs patches/s the backbone consumes (forward +
   backward on k patches with grad; no-grad fill at batch 64). Requirement: the loader
   delivers >= 2x what the backbone consumes.

Usage::

    .venv/bin/python benchmarks/bench_train.py              # 512,1024,2048,4096,8192
    .venv/bin/python benchmarks/bench_train.py --quick      # 512,1024, 1 repeat (smoke run)
    .venv/bin/python benchmarks/bench_train.py --device cuda

Modules: ``benchmarks/train/`` (step, runner, loader, report, plot, settings); this file parses
the options and runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    describe_machine,
    log,
    parse_sizes,
    parser,
    start,
    write_json,
)
from benchmarks.train.loader import bench_loader  # noqa: E402
from benchmarks.train.plot import plot  # noqa: E402
from benchmarks.train.report import (  # noqa: E402
    growth_lines,
    memory_table,
    print_report,
    speed_table,
)
from benchmarks.train.runner import run_sizes  # noqa: E402
from benchmarks.train.settings import DEFAULT_SIZES, NAME, QUICK_SIZES, settings_doc  # noqa: E402
from benchmarks.train.step import child_step  # noqa: E402


def auto_threads(device: str) -> int:
    """Torch threads for a fair CPU measurement on a shared machine.

    On a busy box OpenMP threads that outnumber the free cores spin against other processes
    and a step gets several times slower (measured here: mobilenet_v2 fwd+bwd of 16 patches,
    0.6 s with 1 thread vs 3-7 s with 2 threads at load average 5 on 2 cores), so use the cores
    the load average leaves free, at least one.
    """
    if device != "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (also the internal ``--child`` mode); defaults that depend on ``--quick``."""
    sizes, quick = f"image sides (default {DEFAULT_SIZES})", f"smoke run: sizes {QUICK_SIZES}"
    ap = parser(__doc__, NAME, None, sizes, quick)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--png", default=None, help="plot file (default: the JSON's name, .png)")
    ap.add_argument(
        "--threads",
        type=int,
        default=-1,
        help="torch threads (-1: the cores left free by the load average, at least 1; "
        "0: torch's default)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 3)")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--zeta", type=int, default=4)
    ap.add_argument("--epsilon", type=int, default=4)
    ap.add_argument("--fill-batch", type=int, default=64)
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="GD 'does not fit' above")
    ap.add_argument("--slide-size", type=int, default=None, help="part 3 slide side (8192)")
    ap.add_argument("--loader-batches", type=int, default=None)
    ap.add_argument("--backbone-iters", type=int, default=None)
    ap.add_argument("--skip-loader", action="store_true", help="parts 1-2 only")
    ap.add_argument("--child-timeout", type=float, default=1200.0)
    # child mode (internal)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=("gd", "patchgd"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.slide_size is None:
        args.slide_size = 4096 if args.quick else 8192
    if args.loader_batches is None:
        args.loader_batches = 10 if args.quick else 40
    if args.backbone_iters is None:
        args.backbone_iters = 2 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one configuration); returns the exit code."""
    args = parse_args(argv)
    if args.child:
        res = child_step(args)
        Path(args.child_out).write_text(json.dumps(res))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    json_path, info = start(args, NAME, announce=False)
    png_path = Path(args.png) if args.png else json_path.with_suffix(".png")
    workdir = Path(args.workdir)
    info["versions"]["torch"] = torch.__version__
    info["device"] = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({info['cpu_model']})"
    )
    if args.threads < 0:
        args.threads = auto_threads(args.device)
        info["torch_threads_rule"] = "auto: usable cores minus the 1-min load average, >= 1"
    info["torch_threads"] = args.threads or torch.get_num_threads()
    machine = describe_machine(info) + f"; torch {torch.__version__}, device {args.device}"
    machine += f", {info['torch_threads']} torch threads"
    log(machine)
    settings = settings_doc(args, sizes)

    # ---- parts 1 and 2
    t_start = time.perf_counter()
    mem_rows, time_rows = run_sizes(args, sizes, workdir)
    log(f"parts 1-2 took {time.perf_counter() - t_start:.0f} s")

    mem_text, mem_summary = memory_table(mem_rows, sizes)
    growth, growth_doc = growth_lines(mem_summary)
    speed_text, speed_summary = speed_table(time_rows, mem_rows, sizes)

    # ---- part 3
    loader = None
    if not args.skip_loader:
        t0 = time.perf_counter()
        loader = bench_loader(args, workdir)
        loader["seconds"] = time.perf_counter() - t0

    info["loadavg_at_end"] = os.getloadavg()
    doc = {
        "benchmark": NAME,
        "machine": info,
        "machine_text": machine,
        "settings": settings,
        "memory": mem_summary,
        "memory_growth": growth_doc,
        "speed": speed_summary,
        "loader": loader,
        "raw_memory": mem_rows,
        "raw_time": time_rows,
        "total_s": time.perf_counter() - t_start,
    }
    write_json(json_path, doc)
    plot(png_path, mem_summary, speed_summary, loader, machine, args.mem_limit_gb * 1e3)

    print_report(args, doc, mem_text, growth, speed_text, json_path, png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
