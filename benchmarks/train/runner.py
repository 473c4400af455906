"""Running one configuration of the training benchmark in a fresh process under a watchdog.

The parent side of :mod:`.step`: starts ``bench_train.py --child ...``, kills it above
``--mem-limit-gb`` RSS or when the machine runs low on memory, and turns a child that died into
a "does not fit" result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import REPO, log, remove
from benchmarks._memory import RssSampler
from benchmarks.train.settings import BATCH, LATENT_DIM, MB, MEMORY_ENV

#: the entry point the children run (``--child``)
SCRIPT = REPO / "benchmarks" / "bench_train.py"


def child_command(
    args: argparse.Namespace, method: str, side: int, repeats: int, out: Path
) -> list[str]:
    """The command line of one child: ``bench_train.py --child`` with this run's settings."""
    return [
        sys.executable, str(SCRIPT), "--child", "--method", method,
        "--size", str(side), "--child-out", str(out), "--device", args.device,
        "--threads", str(args.threads), "--repeats", str(repeats), "--patch", str(args.patch),
        "--k", str(args.k), "--zeta", str(args.zeta), "--epsilon", str(args.epsilon),
        "--fill-batch", str(args.fill_batch), "--mem-limit-gb", str(args.mem_limit_gb),
    ]  # fmt: skip


def watchdog(limit_gb: float) -> Any:
    """``kill_if`` for :class:`~benchmarks._memory.RssSampler`: above the limit or low memory."""
    import psutil

    def why(rss: int) -> str:
        avail = psutil.virtual_memory().available
        if rss > limit_gb * 1e9 * 1.02:
            return f"watchdog: RSS {rss / 1e9:.1f} GB > limit {limit_gb:g} GB"
        if avail < 1.0e9:
            return f"watchdog: machine low on memory ({avail / 1e9:.2f} GB available)"
        return ""

    return why


def run_child(
    args: argparse.Namespace, method: str, side: int, repeats: int, workdir: Path, mode: str
) -> dict[str, Any]:
    """One configuration in a fresh process under the watchdog; ``mode``: memory or time.

    Returns:
        The child's result (see :func:`benchmarks.train.step.child_step`), or a "does not fit"
        one with the reason, plus ``sampled_peak_rss_bytes``, ``wall_s``, ``mode`` and
        ``malloc_env``.
    """
    name = "GD" if method == "gd" else "PatchGD"
    what = "memory step" if mode == "memory" else f"warm-up + {repeats} timed steps"
    if mode == "time" and repeats == 0:
        what = "one (cold) timed step"
    log(f"{name:<7} {side:>5}: {what} in a fresh process ...")
    out = workdir / f"child_{method}_{side}_{mode}.json"
    remove(out)
    t0 = time.perf_counter()
    env = dict(os.environ, **(MEMORY_ENV if mode == "memory" else {}))
    proc = subprocess.Popen(child_command(args, method, side, repeats, out), cwd=REPO, env=env)
    timeout = ""
    with RssSampler(proc, 0.02, kill_if=watchdog(args.mem_limit_gb)) as sampler:
        try:
            rc: int | None = proc.wait(args.child_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
            timeout = f"timeout after {args.child_timeout:.0f} s"
    killed = sampler.killed or timeout
    wall = time.perf_counter() - t0
    if out.exists() and rc == 0:
        res = json.loads(out.read_text())
    else:
        res = _does_not_fit(args, method, side, rc, killed)
    res["sampled_peak_rss_bytes"] = sampler.peak
    res["wall_s"] = wall
    res["mode"] = mode
    res["malloc_env"] = MEMORY_ENV if mode == "memory" else {}
    if not res.get("fits"):
        log(f"{name:<7} {side:>5}: does not fit ({res.get('reason')})")
    elif mode == "memory":
        plan = res.get("plan", {}).get("estimate")
        log(
            f"{name:<7} {side:>5}: step peak {res['step_peak_bytes'] / MB:,.0f} MB"
            + (f" (plan_memory estimate {plan / MB:,.0f} MB)" if plan else "")
            + f", {wall:.0f} s"
        )
    else:
        rep = res.get("repeat_s") or []
        log(
            f"{name:<7} {side:>5}: first step {res['first_step_s']:.2f} s"
            + (f", {np.mean(rep):.2f} s/img over {len(rep)}" if rep else "")
        )
    return res


def _does_not_fit(
    args: argparse.Namespace, method: str, side: int, rc: int | None, killed: str
) -> dict[str, Any]:
    """The result of a child that left none: killed, timed out or failed."""
    reason = killed or f"child exited with status {rc}"
    if rc is not None and rc < 0 and not killed:
        reason = f"child killed by signal {-rc} (likely out of memory)"
    n = -(-side // args.patch)
    res: dict[str, Any] = {
        "method": method,
        "side": side,
        "fits": False,
        "reason": reason,
        "n_h": n,
        "n_w": n,
        "z_bytes": BATCH * LATENT_DIM * n * n * 4,
        "image_bytes": 3 * side * side,
    }
    if not killed and rc not in (None, -9) and rc != 0:
        log(f"  {method} {side}: child failed with status {rc} (see its stderr above)")
        res["error"] = True
    return res


def run_sizes(
    args: argparse.Namespace, sizes: list[int], workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parts 1 and 2: per size and method a memory child (fixed mmap threshold) and a timing
    child (default allocator), each a fresh process; GD stops at the first size it does not fit.

    Returns:
        (memory results, timing results), one per child run.
    """
    mem_rows: list[dict[str, Any]] = []
    time_rows: list[dict[str, Any]] = []
    gd_fits = True
    for side in sizes:
        gd_mem = None
        if gd_fits:
            gd_mem = run_child(args, "gd", side, 0, workdir, "memory")
            mem_rows.append(gd_mem)
            if gd_mem.get("fits"):
                if args.repeats:
                    time_rows.append(run_child(args, "gd", side, args.repeats, workdir, "time"))
            else:
                gd_fits = False
                log(f"GD      {side:>5}: no larger GD sizes are tried")
        else:
            log(f"GD      {side:>5}: skipped (a smaller size did not fit)")
        pg_mem = run_child(args, "patchgd", side, 0, workdir, "memory")
        mem_rows.append(pg_mem)
        gd_ok = gd_mem is not None and gd_mem.get("fits")
        if pg_mem.get("fits") and (args.repeats or not gd_ok):
            reps = args.repeats if gd_ok else 0  # where GD does not fit: one cold step
            time_rows.append(run_child(args, "patchgd", side, reps, workdir, "time"))
    return mem_rows, time_rows
