"""A cProfile of the batched read path in every thread (in a subprocess), summarised by part.

``bench_read.py --worker profile`` runs :func:`profile_main`; :func:`run_profile` starts it.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import REPO, remove, table
from benchmarks.read.stores import tissue_positions

#: the entry point the profiling worker runs (``--worker profile``)
SCRIPT = REPO / "benchmarks" / "bench_read.py"


def profile_main(args: argparse.Namespace) -> None:
    """``--worker profile``: cProfile of batched reads in every thread; writes a text report."""
    import cProfile
    import io
    import pstats
    import threading

    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def bootstrap(frame: Any, event: str, arg: Any) -> None:  # first call in a new thread
        p = cProfile.Profile()
        with lock:
            profilers.append(p)
        p.enable()

    threading.setprofile(bootstrap)
    main = cProfile.Profile()
    profilers.append(main)

    from wsi_patchgd.store import SlideStore

    store = SlideStore(args.store)
    rng = np.random.default_rng(123)
    rows, cols = tissue_positions(store, args.batch * args.batches, rng)
    store.read_patches(0, rows[: args.batch], cols[: args.batch])  # warm: threads, metadata
    main.enable()
    t0 = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        store.read_patches(0, rows[i : i + args.batch], cols[i : i + args.batch])
    wall = time.perf_counter() - t0
    main.disable()
    threading.setprofile(None)  # type: ignore[arg-type]
    stats = None
    for p in profilers:
        with contextlib.suppress(Exception):
            p.disable()
        with contextlib.suppress(TypeError):  # a profiler that never ran has no stats
            if stats is None:
                stats = pstats.Stats(p)
            else:
                stats.add(p)
    out = io.StringIO()
    out.write(
        f"{len(rows)} patches in {wall:.2f} s under cProfile "
        f"({len(rows) / wall:.0f} patches/s; profiling slows this down), "
        f"{len(profilers)} threads profiled; times summed over all threads\n"
    )
    if stats is not None:
        out.write(summarise_profile(stats))
    Path(args.result).write_text(out.getvalue())


_IDLE = (
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'select' of 'select.epoll' objects>",
    "<built-in method time.sleep>",
)


def _component(filename: str, func: str) -> str:
    """The part of the stack a profiled function belongs to (zarr, codec, asyncio ...)."""
    f = filename.replace("\\", "/")
    if filename == "~":
        low = func.lower()
        if any(k in low for k in ("blosc", "decompress", "zstd", "lz4")):
            return "codec decode (C)"
        if any(k in low for k in ("read", "open", "seek", "stat", "close")):
            return "file I/O syscalls"
        return "other builtins (numpy copies, ...)"
    for key, name in (
        ("zarr/codecs/sharding", "zarr sharding codec (shard index, chunk lookup)"),
        ("zarr/core/indexing", "zarr indexing"),
        ("zarr/core/codec_pipeline", "zarr codec pipeline"),
        ("zarr/core/buffer", "zarr buffers"),
        ("zarr/storage", "zarr store (LocalStore/FsspecStore)"),
        ("zarr/codecs", "zarr codecs (python side)"),
        ("zarr/", "zarr other (array, sync, common, config)"),
        ("donfig", "zarr other (array, sync, common, config)"),
        ("numcodecs", "codec decode (python side)"),
        ("asyncio/", "asyncio event loop"),
        ("concurrent/futures", "thread-pool dispatch"),
        ("threading.py", "thread-pool dispatch"),
        ("numpy/", "numpy"),
        ("wsi_patchgd/", "wsi_patchgd"),
        ("fsspec/", "fsspec/s3fs/aiohttp"),
        ("s3fs/", "fsspec/s3fs/aiohttp"),
        ("aiohttp/", "fsspec/s3fs/aiohttp"),
    ):
        if key in f:
            return name
    return "other python"


def summarise_profile(stats: Any) -> str:
    """Busy time (idle waits excluded) by component, then the busiest functions."""
    busy: list[tuple[float, int, float, str, str]] = []
    for (filename, line, func), (_, nc, tt, ct, _) in stats.stats.items():
        if func in _IDLE:
            continue
        where = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
        busy.append((tt, nc, ct, where, _component(filename, func)))
    total = sum(b[0] for b in busy) or 1.0
    groups: dict[str, float] = {}
    for tt, _, _, _, comp in busy:
        groups[comp] = groups.get(comp, 0.0) + tt
    lines = [f"busy CPU time (idle waits excluded), all threads: {total:.2f} s", ""]
    lines.append(
        table(
            ["component", "seconds", "%"],
            [[k, v, 100 * v / total] for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
        )
    )
    lines += ["", "busiest functions (self time):"]
    top = sorted(busy, key=lambda b: -b[0])[:25]
    lines.append(
        table(["function", "calls", "self s", "cum s"], [[w, n, t, c] for t, n, c, w, _ in top])
    )
    return "\n".join(lines) + "\n"


def run_profile(store: str, workdir: Path, batch: int, batches: int) -> str:
    """Run :func:`profile_main` in a subprocess on ``store``; returns its text report."""
    result = workdir / "profile.txt"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--worker",
        "profile",
        "--store",
        store,
        "--result",
        str(result),
        "--batch",
        str(batch),
        "--batches",
        str(batches),
    ]
    subprocess.run(cmd, check=True)
    text = result.read_text()
    remove(result)
    return text
