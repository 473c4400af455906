"""Every mode on every workload: local, then s3:// (no cache, cold cache, warm cache).

Runs are interleaved (each repeat runs local and then every remote mode), so that a busy
machine slows all modes alike; medians are reported. The server's own ceiling (every level-0
shard object fetched whole, 16 at a time, with plain s3fs through the same proxy) is measured
too: on a small machine moto (a Python server) and the proxy share the cores with the reader.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import log
from benchmarks.stream.stores import local_store, upload
from benchmarks.stream.workloads import Workload, plans, run

#: seconds every mode waits before it starts (after os.sync): the cold mode before the warm one
#: has just written hundreds of MB of cache files, which this VM's kernel is slow to absorb
SETTLE_S = 2.0


def _source(urls: list[str], so: dict[str, Any] | None, **kw: Any) -> Any:
    """A fresh StorePatchSource with every store, grid and level array opened (not timed:
    a training process opens them once; the reads are what is measured)."""
    from wsi_patchgd.data import StorePatchSource

    src = StorePatchSource(urls, 0, storage_options=so, **kw)
    for i in range(len(urls)):
        src.grid(i)
        src.store(i).chunk_reader(src.levels[i])  # the level's metadata: a request remotely
    src.take_io_stats()
    return src


def _check(local: Any, remote: Any, wl: Workload) -> None:
    image, idx = wl.phases[0][0]
    if not np.array_equal(local.read(image, idx).numpy(), remote.read(image, idx).numpy()):
        raise SystemExit(f"{wl.name}: s3:// patches differ from local ones")


def server_ceiling(url: str, so: dict[str, Any], patches: int) -> dict[str, float]:
    """Every level-0 shard of ``url`` fetched whole by plain s3fs, 16 at a time."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=so["key"], secret=so["secret"], endpoint_url=so["endpoint_url"],
        skip_instance_cache=True,
    )  # fmt: skip
    paths = [p for p in fs.find(url + "/0/c")]
    t0 = time.perf_counter()
    data = fs.cat(paths, batch_size=16)
    secs = time.perf_counter() - t0
    mb = sum(len(v) for v in data.values()) / 1e6
    return {"objects": len(paths), "mb": mb, "seconds": secs, "mb_per_s": mb / secs,
            "objects_per_s": len(paths) / secs, "patches_per_s": patches / secs}  # fmt: skip


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Build, upload, start the proxy, measure; the result document."""
    from wsi_patchgd.store.remote import StreamOptions
    from wsi_patchgd.testing import moto_server
    from wsi_patchgd.testing.proxy import fault_proxy

    workdir = Path(args.workdir)
    store = local_store(workdir, args.size, args.codec)
    n = args.images
    doc: dict[str, Any] = {"store": str(store), "size": args.size, "codec": args.codec}
    cache_root = Path(tempfile.mkdtemp(prefix="stream-cache-", dir=workdir))
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    log("starting moto_server ...")
    with moto_server() as so:
        t0 = time.perf_counter()
        urls, mb = upload(store, so, [f"img{i}.zarr" for i in range(n)])
        log(f"uploaded {n} x {mb:,.0f} MB in {time.perf_counter() - t0:.1f} s")
        doc["store_mb"] = mb
        with fault_proxy(so["endpoint_url"], latency_ms=args.latency_ms) as px:
            pso = {**so, "endpoint_url": px.url}
            local_urls = [str(store)] * n
            base = _source(local_urls, None)
            workloads = plans(base, n, args, np.random.default_rng(args.seed))
            doc["workloads"] = {w.name: {"what": w.what, "patches": w.patches} for w in workloads}
            n_tissue = base.grid(0).n_tissue
            doc["server_ceiling"] = server_ceiling(urls[0], pso, n_tissue)
            c = doc["server_ceiling"]
            log(f"server ceiling: {c['mb_per_s']:,.0f} MB/s, {c['objects_per_s']:,.0f} shards/s "
                f"= {c['patches_per_s']:,.0f} tissue patches/s")  # fmt: skip
            for wl in workloads:
                for rep in range(args.repeats):
                    modes: list[tuple[str, str, dict[str, Any]]] = [("local", "-", {})]
                    for backend in args.backends:
                        stream = StreamOptions(backend=backend)
                        cdir = str(cache_root / f"{wl.name}-{backend}-{rep}")
                        modes += [
                            ("no cache", backend, {"stream": stream}),
                            ("cold cache", backend, {"stream": stream, "cache_dir": cdir}),
                            ("warm cache", backend, {"stream": stream, "cache_dir": cdir}),
                        ]
                    for mode, backend, kw in modes:
                        src = (
                            _source(local_urls, None)
                            if mode == "local"
                            else _source(urls, pso, read_workers=args.read_workers, **kw)
                        )
                        os.sync()  # the previous run's cache files are on disk, not in flight
                        time.sleep(SETTLE_S)
                        px.reset_stats()
                        wall, cpu = run(src, wl)
                        io = src.take_io_stats()
                        io["proxy_requests"] = px.stats()["requests"]
                        runs.setdefault((wl.name, mode, backend), []).append(
                            {"wall_s": wall, "cpu_s": cpu, **io}
                        )
                        if mode == "no cache" and rep == 0:
                            _check(base, src, wl)
                log(f"{wl.name}: done ({wl.patches} patches x {args.repeats} repeats)")
    shutil.rmtree(cache_root, ignore_errors=True)
    doc["rows"] = rows(runs, {w.name: w.patches for w in workloads})
    return doc


def rows(
    runs: dict[tuple[str, str, str], list[dict[str, Any]]], patches: dict[str, int]
) -> list[dict[str, Any]]:
    """One row per (workload, mode, backend): medians, ratios to local, I/O counters."""
    out = []
    for (wl, mode, backend), rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        local = runs[(wl, "local", "-")]
        lwall = statistics.median(r["wall_s"] for r in local)
        lcpu = statistics.median(r["cpu_s"] for r in local)
        first = rs[0]
        out.append({
            "workload": wl, "mode": mode, "backend": backend,
            "patches_per_s": patches[wl] / wall, "ratio": lwall / wall,
            "cpu_ms_per_patch": 1000 * cpu / patches[wl], "cpu_ratio": lcpu / cpu if cpu else 0,
            "requests": first["requests"], "mb_fetched": first["bytes_fetched"] / 1e6,
            "cache_hits": first["cache_hits"], "cache_misses": first["cache_misses"],
            "retries": first["retries"], "runs": rs,
        })  # fmt: skip
    return out
