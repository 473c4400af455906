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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_WORKDIR,
    default_json,
    describe_machine,
    dir_size_mb,
    ensure_slide,
    log,
    machine_info,
    parse_sizes,
    remove,
    table,
    texture_tiles,
    write_json,
)

NAME = "bench_read"
TARGET_SPEEDUP = 3.0
PATCH = 256


# --------------------------------------------------------------------------------------------
# the store and the patch positions


def find_or_build_store(slide: Path, workdir: Path, codec: str = "blosc-lz4") -> tuple[str, bool]:
    """A complete store of ``slide`` (``--codec codec``): reused if one exists in the work
    folder, else built.

    Returns (store path, whether this run built it).
    """
    from wsi_patchgd.errors import WsiPatchGDError
    from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many, store_name

    name = store_name(str(slide))
    dirs = (
        (workdir / "read", workdir / "convert" / "ours")
        if codec == "blosc-lz4"
        else (workdir / f"read-{codec}",)
    )
    for d in dirs:
        cand = d / name
        if cand.exists():
            try:
                SlideStore(str(cand))
            except WsiPatchGDError:
                continue
            log(f"store: reusing {cand}")
            return str(cand), False
    out = dirs[0]
    log(f"store: converting {slide.name} into {out} (--codec {codec}) ...")
    t0 = time.perf_counter()
    (res,) = convert_many(
        [str(slide)], str(out), ConvertOptions(codec=codec), workers=2, quiet=True
    )
    if res.status != "ok":
        raise SystemExit(f"conversion failed: {res.reason}")
    log(f"store: built in {time.perf_counter() - t0:.1f} s ({dir_size_mb(out / name):,.0f} MB)")
    return str(out / name), True


def tissue_positions(store: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (row, col) cells of level 0 that are mostly tissue (distinct if possible)."""
    frac = store.patch_fractions(0)
    cells = np.argwhere(frac >= 0.5)
    if len(cells) == 0:
        cells = np.argwhere(np.ones_like(frac, dtype=bool))
    idx = rng.choice(len(cells), size=n, replace=n > len(cells))
    return cells[idx, 0], cells[idx, 1]


# --------------------------------------------------------------------------------------------
# readers under test


def openslide_reader(slide: Any) -> Callable[[int, int], np.ndarray]:
    def read(r: int, c: int) -> np.ndarray:
        img = slide.read_region((int(c) * PATCH, int(r) * PATCH), 0, (PATCH, PATCH))
        return np.asarray(img.convert("RGB"))

    return read


class FloorReader:
    """Chunks of a sharded level read without zarr: pread (shard index once), pread, decode.

    Only for the layout our converter writes (one inner chunk per patch, index at the shard's
    end as little-endian (offset, nbytes) uint64 pairs + crc32c, one bytes-to-bytes codec).
    """

    def __init__(self, store_path: str, level: int = 0) -> None:
        meta = json.loads((Path(store_path) / str(level) / "zarr.json").read_text())
        (shard_codec,) = meta["codecs"]
        if shard_codec["name"] != "sharding_indexed":
            raise ValueError("level is not sharded")
        conf = shard_codec["configuration"]
        self.chunk = conf["chunk_shape"]
        self.shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if conf.get("index_location", "end") != "end":
            raise ValueError("shard index not at the end")
        names = [c["name"] for c in conf["index_codecs"]]
        if names not in (["bytes", "crc32c"], ["bytes"]):
            raise ValueError(f"unexpected index codecs {names}")
        self.n_chunks = int(np.prod([s // c for s, c in zip(self.shard, self.chunk, strict=True)]))
        self.index_bytes = 16 * self.n_chunks + (4 if "crc32c" in names else 0)
        codecs = conf["codecs"]
        if [c["name"] for c in codecs][0] != "bytes" or len(codecs) > 2:
            raise ValueError(f"unexpected chunk codecs {codecs}")
        self.decode = _bytes_codec(codecs[1] if len(codecs) == 2 else None)
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        self.prefix = "c" + sep if meta["chunk_key_encoding"]["name"] == "default" else ""
        self.sep = sep
        self.root = Path(store_path) / str(level)
        self.per_shard = [s // c for s, c in zip(self.shard, self.chunk, strict=True)]
        self._index: dict[str, np.ndarray] = {}  # shard indexes, read once (as ours does)

    def read(self, r: int, c: int) -> np.ndarray:
        sy, iy = divmod(int(r), self.per_shard[1])
        sx, ix = divmod(int(c), self.per_shard[2])
        key = self.prefix + self.sep.join(["0", str(sy), str(sx)])
        fd = os.open(self.root / key, os.O_RDONLY)
        try:
            index = self._index.get(key)
            if index is None:
                size = os.fstat(fd).st_size
                raw = os.pread(fd, self.index_bytes, size - self.index_bytes)
                index = np.frombuffer(raw[: 16 * self.n_chunks], "<u8").reshape(-1, 2)
                self._index[key] = index
            off, nbytes = index[iy * self.per_shard[2] + ix]
            if int(nbytes) == 2**64 - 1:  # empty chunk: the fill value
                return np.full(self.chunk, 255, np.uint8)
            data = os.pread(fd, int(nbytes), int(off))
        finally:
            os.close(fd)
        return np.frombuffer(self.decode(data), np.uint8).reshape(self.chunk)


def _bytes_codec(conf: dict[str, Any] | None) -> Callable[[bytes], Any]:
    if conf is None:
        return lambda b: b
    if conf["name"] == "blosc":
        from numcodecs import Blosc

        return Blosc().decode
    if conf["name"] == "zstd":
        from numcodecs import Zstd

        return Zstd().decode
    raise ValueError(f"unsupported codec {conf['name']}")


# --------------------------------------------------------------------------------------------
# timing


def time_batched(
    fn: Callable[[np.ndarray, np.ndarray], Any], rows: np.ndarray, cols: np.ndarray, batch: int
) -> float:
    """Patches per second of ``fn(rows, cols)`` called on consecutive batches."""
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        fn(rows[i : i + batch], cols[i : i + batch])
    return len(rows) / (time.perf_counter() - t0)


def time_single(
    fn: Callable[[int, int], Any], rows: np.ndarray, cols: np.ndarray, threads: int = 1
) -> float:
    """Patches per second of ``fn(r, c)`` one patch at a time (optionally from a pool)."""
    if threads == 1:
        t0 = time.perf_counter()
        for r, c in zip(rows, cols, strict=True):
            fn(r, c)
        return len(rows) / (time.perf_counter() - t0)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, rows[:threads], cols[:threads]))  # start the threads
        t0 = time.perf_counter()
        list(pool.map(fn, rows, cols))
        return len(rows) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# moto S3 server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 in a subprocess (always stopped); yields storage options."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        raise RuntimeError("moto_server not found: install the test extra (moto[server])")
    port = _free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start within 30 s") from None
                time.sleep(0.2)
        old = {
            k: os.environ.get(k)
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        }
        os.environ.update({k: env[k] for k in old})
        try:
            yield {
                "endpoint_url": f"http://127.0.0.1:{port}",
                "key": "testing",
                "secret": "testing",
            }
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(f"moto_server (pid {proc.pid}) stopped")


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


# --------------------------------------------------------------------------------------------
# profile (subprocess, so that every thread zarr starts is profiled)


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
    result = workdir / "profile.txt"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
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


# --------------------------------------------------------------------------------------------
# the benchmark


def bench(args: argparse.Namespace, size: int) -> dict[str, Any]:
    import openslide

    from wsi_patchgd.store import SlideStore

    workdir = Path(args.workdir)
    slide_file = Path(args.slide) if args.slide else ensure_slide(workdir, size, texture_tiles())
    store_path, built = find_or_build_store(slide_file, workdir)
    store = SlideStore(store_path)
    jpeg_path, jpeg_built = find_or_build_store(slide_file, workdir, "jpeg")
    jstore = SlideStore(jpeg_path)
    n = args.batch * args.batches
    rng = np.random.default_rng(args.seed)
    results: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        results.setdefault(name, []).append(v)

    osl = openslide.OpenSlide(str(slide_file))
    os_read = openslide_reader(osl)
    try:
        floor: FloorReader | None = FloorReader(store_path)
    except (ValueError, KeyError, OSError) as exc:
        log(f"floor: not measured ({exc})")
        floor = None

    # warm-up: threads, metadata, page cache of both files
    wr, wc = tissue_positions(store, args.batch, rng)
    store.read_patches(0, wr, wc)
    for r, c in zip(wr, wc, strict=True):
        os_read(r, c)
    # correctness of what we time: our patches equal OpenSlide's
    got = store.read_patches(0, wr[:8], wc[:8]).transpose(0, 2, 3, 1)
    ref = np.stack([os_read(r, c) for r, c in zip(wr[:8], wc[:8], strict=True)])
    max_diff = int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max())
    log(f"check: max |ours - OpenSlide| over 8 patches = {max_diff}")
    jstore.read_patches(0, wr, wc)
    jgot = jstore.read_patches(0, wr[:8], wc[:8]).transpose(0, 2, 3, 1)
    jpeg_diff = int(np.abs(jgot.astype(np.int16) - ref.astype(np.int16)).max())
    log(f"check: max |ours (--codec jpeg) - OpenSlide| over 8 patches = {jpeg_diff}")
    if floor is not None:
        fl = np.stack([floor.read(r, c) for r, c in zip(wr[:8], wc[:8], strict=True)])
        if not np.array_equal(fl.transpose(0, 2, 3, 1), got):
            log("floor: its chunks differ from SlideStore's; not measured")
            floor = None
    load_before = os.getloadavg()

    for rep in range(args.repeats):
        rows, cols = tissue_positions(store, n, rng)
        log(f"repeat {rep + 1}/{args.repeats}: {n} random tissue patches")
        add(
            "ours_batch",
            time_batched(lambda r, c: store.read_patches(0, r, c), rows, cols, args.batch),
        )
        add(
            "ours_jpeg_batch",
            time_batched(lambda r, c: jstore.read_patches(0, r, c), rows, cols, args.batch),
        )
        m = min(n, args.single)
        add(
            "ours_single",
            time_batched(lambda r, c: store.read_patches(0, r, c), rows[:m], cols[:m], 1),
        )
        add("openslide", time_single(os_read, rows, cols))
        add("openslide_2threads", time_single(os_read, rows, cols, threads=2))
        if floor is not None:
            add("floor", time_single(floor.read, rows, cols))
        log("  " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()))
    osl.close()

    s3: dict[str, Any] = {}
    if not args.no_s3:
        s3 = bench_s3(store_path, store, args, rng)
        for k in ("ours_s3_batch", "ours_s3_single"):
            if k in s3:
                results[k] = s3.pop(k)

    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["ours_batch"] / med["openslide"]
    doc: dict[str, Any] = {
        "size": size,
        "slide": str(slide_file),
        "store": store_path,
        "store_mb": dir_size_mb(store_path),
        "patch": PATCH,
        "batch": args.batch,
        "patches_per_repeat": n,
        "repeats": args.repeats,
        "check_max_abs_diff": max_diff,
        "check_max_abs_diff_jpeg": jpeg_diff,
        "store_jpeg_mb": dir_size_mb(jpeg_path),
        "ratio_ours_jpeg_batch_over_openslide": med["ours_jpeg_batch"] / med["openslide"],
        "patches_per_s_median": med,
        "patches_per_s_all": results,
        "ratio_ours_batch_over_openslide": ratio,
        "ratio_ours_batch_over_openslide_2threads": med["ours_batch"] / med["openslide_2threads"],
        "ratio_ours_single_over_openslide": med["ours_single"] / med["openslide"],
        "target_met": ratio >= TARGET_SPEEDUP,
        "latency_ms_ours_single": 1000.0 / med["ours_single"],
        "latency_ms_openslide": 1000.0 / med["openslide"],
        "s3": s3,
        "loadavg_before_after": [load_before, load_after],
    }
    if "floor" in med:
        doc["ratio_ours_batch_over_floor"] = med["ours_batch"] / med["floor"]
    if ratio < TARGET_SPEEDUP or args.profile:
        log("profiling the batched path (cProfile in every thread) ...")
        doc["profile"] = run_profile(store_path, workdir, args.batch, max(4, args.batches // 2))
    for path, was_built in ((store_path, built), (jpeg_path, jpeg_built)):
        if was_built and not args.keep_stores:
            remove(path)
            log(f"store: removed {path}")
    return doc


def bench_s3(
    store_path: str, local: Any, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    from wsi_patchgd.store import SlideStore

    out: dict[str, Any] = {}
    log("s3: starting moto_server ...")
    with moto_server() as opts:
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


def report(doc: dict[str, Any]) -> str:
    med = doc["patches_per_s_median"]
    os1 = med["openslide"]
    labels = [
        ("ours_batch", f"ours: SlideStore.read_patches, batch {doc['batch']} (local)"),
        ("ours_single", "ours: SlideStore.read_patches, batch 1 (local)"),
        ("ours_jpeg_batch", f"ours, --codec jpeg store: read_patches, batch {doc['batch']}"),
        ("openslide", "OpenSlide read_region, 1 thread"),
        ("openslide_2threads", "OpenSlide read_region, 2-thread pool"),
        ("floor", "floor: pread + decode, 1 thread, no zarr"),
        ("ours_s3_batch", f"ours: read_patches, batch {doc['batch']} (s3:// moto)"),
        ("ours_s3_single", "ours: read_patches, batch 1 (s3:// moto)"),
    ]
    rows = [[label, med[k], 1000.0 / med[k], med[k] / os1] for k, label in labels if k in med]
    lines = [
        f"random {doc['patch']}^2 tissue patches of level 0, {doc['size']}^2 slide, "
        f"{doc['patches_per_repeat']} patches x {doc['repeats']} repeats (median)",
        table(["method", "patches/s", "ms/patch", "x OpenSlide"], rows),
        "",
        f"ours (batch {doc['batch']}) / OpenSlide (1 thread) = "
        f"{doc['ratio_ours_batch_over_openslide']:.2f}x (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{'met' if doc['target_met'] else 'NOT met'}); / OpenSlide (2 threads) = "
        f"{doc['ratio_ours_batch_over_openslide_2threads']:.2f}x",
        f"latency of one patch: ours {doc['latency_ms_ours_single']:.2f} ms, "
        f"OpenSlide {doc['latency_ms_openslide']:.2f} ms; max |ours - OpenSlide| = "
        f"{doc['check_max_abs_diff']}",
        f"--codec jpeg store: {doc['ratio_ours_jpeg_batch_over_openslide']:.2f}x OpenSlide, "
        f"max |diff| = {doc['check_max_abs_diff_jpeg']}, {doc['store_jpeg_mb']:,.0f} MB vs "
        f"{doc['store_mb']:,.0f} MB (blosc-lz4)",
    ]
    if "ratio_ours_batch_over_floor" in doc:
        lines.append(
            f"ours (batch) / floor = {doc['ratio_ours_batch_over_floor']:.2f} "
            "(1.0 = as fast as a bare pread + decode loop)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="32768", help="slide side (first used; default %(default)s)")
    ap.add_argument(
        "--workdir",
        default=str(DEFAULT_WORKDIR),
        help="slides and stores go here (default %(default)s)",
    )
    ap.add_argument(
        "--json", default=None, help=f"result file (default benchmarks/results/{NAME}.json)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="8192^2 slide and fewer patches (smoke run)"
    )
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
    json_path = Path(args.json) if args.json else default_json(NAME, args.quick)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
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
