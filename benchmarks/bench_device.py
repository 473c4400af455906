"""Training on an accelerator: peak memory, bf16 vs fp32, step time, Zarr loader vs backbone.

Two parts, with the training benchmark's model (``mobilenet_v2``, ``weights=None``, latent
D = 256, batch size 1, Adam):

1. **loader**: patches/s of the read path (``StorePatchSource`` on a Zarr store converted here
   from a synthetic slide; ``benchmarks/train/loader.py``) vs patches/s the backbone consumes
   per dtype (forward + backward of k patches; no-grad fill batches).
2. **sweep**: PatchGD vs GD as the image side grows (default 512 ... 8192), for each
   ``--dtypes`` (``fp32``; ``bf16`` = ``torch.autocast`` with ``bfloat16``): the first step's
   peak memory (CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before; CPU:
   the rise of the peak RSS, see ``benchmarks/device/memory.py``), seconds per step (mean of
   ``--repeats`` more steps) and PatchGD's patches/s. PatchGD's peak should stay flat and GD's
   grow with the pixels until it no longer fits: ``torch.cuda.OutOfMemoryError`` is recorded
   as ``OOM`` and larger GD sides are not tried for that dtype. Sides that would not finish
   by ``--budget-s`` (counted from the start) are skipped.

The result JSON (written after each part, so a run cut short keeps what it measured) holds the
machine, torch's version and the GPU (name, memory, CUDA and cuDNN versions). Nothing is
downloaded: the images are in-memory noise, the slide is generated.

Usage::

    .venv/bin/python benchmarks/bench_device.py --device cuda            # on a GPU
    .venv/bin/python benchmarks/bench_device.py --quick --device cpu     # smoke run (< 1 min)
    .venv/bin/python benchmarks/bench_device.py --table out/device/bench_device.json
    bash benchmarks/device.sh        # fresh GPU machine: make install, then this, < 8 minutes

Modules: ``benchmarks/device/`` (settings, memory, sweep, throughput, report).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    describe_machine,
    describe_torch,
    log,
    parser,
    start,
    torch_info,
    write_json,
)
from benchmarks.device.memory import PeakMemory, fix_malloc_threshold  # noqa: E402
from benchmarks.device.report import report  # noqa: E402
from benchmarks.device.settings import (  # noqa: E402
    DEFAULT_SIZES,
    NAME,
    QUICK_SIZES,
    apply_defaults,
    parse_sides,
)
from benchmarks.device.sweep import growth, run_sweep  # noqa: E402
from benchmarks.device.throughput import run_throughput  # noqa: E402
from benchmarks.train.settings import BACKBONE, BATCH, LATENT_DIM, N_CLASSES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; those left unset take their default, or their ``--quick`` default."""
    sizes = f"image sides of the sweep (default {DEFAULT_SIZES}; --quick {QUICK_SIZES})"
    quick = f"CPU smoke run: sides {QUICK_SIZES}, P=32, fp32, a 2048^2 slide (under a minute)"
    ap = parser(__doc__, NAME, None, sizes, quick)
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"), help="(cuda)")
    ap.add_argument("--dtypes", default=None, help="fp32,bf16 (--quick: fp32)")
    ap.add_argument("--parts", default="sweep,loader", help="sweep, loader or both (both)")
    ap.add_argument("--patch", type=int, default=None, help="patch side (128; --quick 32)")
    ap.add_argument("--k", type=int, default=None, help="patches per inner iteration (16)")
    ap.add_argument("--zeta", type=int, default=None, help="inner iterations (4)")
    ap.add_argument("--epsilon", type=int, default=None, help="iterations per optimizer step (4)")
    ap.add_argument("--fill-batch", type=int, default=None, help="patches per fill call (64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per config (3)")
    ap.add_argument("--slide-size", type=int, default=None, help="loader slide side (4096)")
    ap.add_argument("--loader-batches", type=int, default=None, help="read batches timed (40)")
    ap.add_argument("--backbone-iters", type=int, default=None, help="backbone calls timed (10)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--mem-limit-gb", type=float, default=8.0, help="CPU only: a step above this is OOM (8)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=0.0, help="seconds; the sweep stops here (0: no limit)"
    )
    ap.add_argument("--table", default=None, help="print the tables of this result JSON, exit")
    return apply_defaults(ap.parse_args(argv))


def settings_doc(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """The ``settings`` block of the JSON: the fixed model and this run's options."""
    return {
        "backbone": BACKBONE, "weights": None, "latent_dim": LATENT_DIM, "batch_size": BATCH,
        "classes": N_CLASSES, "optimizer": "Adam lr 1e-3", "patch": args.patch, "k": args.k,
        "zeta": args.zeta, "epsilon": args.epsilon, "fill_batch": args.fill_batch,
        "sizes": sizes, "dtypes": args.dtypes, "repeats": args.repeats,
        "slide_size": args.slide_size, "device": args.device, "quick": args.quick,
        "parts": args.parts, "budget_s": args.budget_s,
    }  # fmt: skip


def _run_part(doc: dict[str, Any], part: str, fn: Any, json_path: Path) -> bool:
    """Run one part into ``doc[part]``; on failure log it, keep going. Writes the JSON."""
    t0 = time.perf_counter()
    ok = True
    try:
        doc[part] = fn()
    except Exception as exc:  # noqa: BLE001 -- one part failing must not lose the other
        traceback.print_exc()
        doc.setdefault("failed_parts", {})[part] = f"{type(exc).__name__}: {exc}"[:500]
        ok = False
    doc.setdefault("part_seconds", {})[part] = time.perf_counter() - t0
    write_json(json_path, doc)
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the parts, print the tables, write the JSON; returns the exit code."""
    args = parse_args(argv)
    if args.table:
        try:
            saved = json.loads(Path(args.table).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--table {args.table}: not a readable result JSON ({exc})") from None
        print(report(saved), flush=True)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    malloc_fixed = fix_malloc_threshold() if args.device == "cpu" else None
    sizes = parse_sides(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    json_path, info = start(args, NAME, announce=False)
    tinfo = torch_info(args.device)
    log(f"machine: {describe_machine(info)}")
    log(describe_torch(tinfo))
    doc: dict[str, Any] = {
        "benchmark": NAME, "machine": info, "torch": tinfo,
        "settings": settings_doc(args, sizes), "malloc_threshold_fixed": malloc_fixed,
    }  # fmt: skip
    budget = args.budget_s if args.budget_s > 0 else math.inf
    ok = True

    metric = PeakMemory(args.device, 0).metric

    def save(rows: list[dict[str, Any]]) -> None:  # a run cut short keeps the rows so far
        doc["sweep"] = {"rows": rows, "growth": growth(rows), "memory_metric": metric,
                        "complete": False}  # fmt: skip
        write_json(json_path, doc)

    def sweep() -> dict[str, Any]:
        rows, warmup = run_sweep(args, sizes, t_start + budget, save)
        return {"rows": rows, "growth": growth(rows), "memory_metric": metric,
                "complete": True, "warmup_s": warmup}  # fmt: skip

    # the loader first: it is short, and a GD side far beyond the GPU's memory cannot spoil it
    if "loader" in args.parts:
        ok &= _run_part(doc, "throughput", lambda: run_throughput(args, Path(args.workdir)),
                        json_path)  # fmt: skip
    if "sweep" in args.parts:
        ok &= _run_part(doc, "sweep", sweep, json_path)
    doc["machine"]["loadavg_at_end"] = os.getloadavg()
    doc["total_s"] = time.monotonic() - t_start
    write_json(json_path, doc)
    print()
    print(report(doc), flush=True)
    log(f"JSON: {json_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
