"""Reads from ``s3://``: the store uploaded to a local moto S3 server, read through fsspec."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import log
from benchmarks.read.stores import tissue_positions
from benchmarks.read.timing import time_batched
from wsi_patchgd.testing import moto_server


def upload_store(store_path: str, opts: dict[str, str], levels: list[int]) -> tuple[str, float]:
    """Upload the store's metadata, tissue tables and the given levels; returns (url, MB)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=opts["key"], secret=opts["secret"], endpoint_url=opts["endpoint_url"]
    )
    bucket = "bench"
    fs.mkdir(bucket)
    root = Path(store_path)
    dest = f"{bucket}/{root.name}"
    files = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root).parts
        if rel[0].isdigit() and int(rel[0]) not in levels and rel[-1] != "zarr.json":
            continue
        files.append(p)
    fs.put([str(p) for p in files], [f"{dest}/{p.relative_to(root).as_posix()}" for p in files])
    return f"s3://{dest}", sum(p.stat().st_size for p in files) / 1e6


def bench_s3(
    store_path: str, local: Any, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    """Batched and single-patch reads of level 0 from ``s3://`` (moto), checked against local.

    Returns:
        Upload size and time, ``identical_to_local``, and per repeat ``ours_s3_batch`` and
        ``ours_s3_single`` patches/s.
    """
    from wsi_patchgd.store import SlideStore

    out: dict[str, Any] = {}
    log("s3: starting moto_server ...")
    with moto_server(log=True) as opts:
        t0 = time.perf_counter()
        url, mb = upload_store(store_path, opts, levels=[0])
        up = time.perf_counter() - t0
        log(f"s3: uploaded level 0 + metadata ({mb:,.0f} MB) to {url} in {up:.1f} s")
        out.update(
            {
                "url": url,
                "uploaded_mb": mb,
                "upload_s": up,
                "server": "moto_server on 127.0.0.1 (in-process Python S3 emulator)",
            }
        )
        remote = SlideStore(url, storage_options=opts)
        n = args.batch * max(1, args.s3_batches)
        wr, wc = tissue_positions(local, args.batch, rng)
        remote.read_patches(0, wr, wc)  # warm: connections, metadata
        same = np.array_equal(
            remote.read_patches(0, wr[:4], wc[:4]), local.read_patches(0, wr[:4], wc[:4])
        )
        out["identical_to_local"] = bool(same)
        for rep in range(args.repeats):
            rows, cols = tissue_positions(local, n, rng)
            bt = time_batched(lambda r, c: remote.read_patches(0, r, c), rows, cols, args.batch)
            m = min(n, args.single // 4)
            st = time_batched(lambda r, c: remote.read_patches(0, r, c), rows[:m], cols[:m], 1)
            out.setdefault("ours_s3_batch", []).append(bt)
            out.setdefault("ours_s3_single", []).append(st)
            log(f"s3: repeat {rep + 1}/{args.repeats}: batch {bt:,.0f}/s, single {st:,.0f}/s")
    return out
