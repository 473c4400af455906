"""What a worker runs: write one shard of one level, then its progress marker.

A task is ``(job, plan, sy, sx)``: :class:`ConvertJob` (picklable: URLs, options as JSON, the
shard side) says which slide and which store, :class:`~wsi_patchgd.store.plan.LevelPlan` which
level. :func:`write_shard` reads the region from the source's level (or its JPEG tiles, copied
unchanged), or the 2x2 mean (:func:`downsample2x`) of the level below read back from the store,
writes the shard object in one put, then the marker ``.progress/<level>/<sy>.<sx>`` that lets a
rerun skip it. Readers, arrays and writers are opened once per worker and conversion (cached by
the job's ``token``).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import Executor, as_completed, wait
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import zarr

from ..io import filesystem, is_remote, zarr_store
from ..readers import SlideReader, open_slide
from ..readers.tiff_tiles import JpegTiles, cut_patches
from .chunk_reader import ChunkReader, supports
from .format import PROGRESS_PREFIX
from .plan import LevelPlan
from .shard_writer import ShardWriter


@dataclass(frozen=True)
class ConvertJob:
    """Everything a worker needs to write shards of one slide (picklable).

    Attributes:
        source: slide path or URL.
        reader: the reader's name (as :func:`~wsi_patchgd.readers.open_slide` takes it).
        source_options: fsspec options of the source, as JSON.
        store_url: the store being written (the store itself, or its ``.rebuild``).
        store_options: fsspec options of the store, as JSON.
        shard: shard side in pixels.
        token: one per conversion: worker-side caches never outlive it.
    """

    source: str
    reader: str
    source_options: str
    store_url: str
    store_options: str
    shard: int
    token: str


#: One shard task: the job, the level, and the shard's row and column.
ShardTask = tuple[ConvertJob, LevelPlan, int, int]

#: Runs a batch of shard tasks, calling back with what each shard task did.
ShardRunner = Callable[[list[ShardTask], Callable[["ShardDone"], None]], None]


@functools.lru_cache(maxsize=16)
def _reader(source: str, reader: str, options_json: str, token: str = "") -> SlideReader:
    return open_slide(source, json.loads(options_json) or None, reader)


@functools.lru_cache(maxsize=64)
def _array(store_url: str, options_json: str, level: int, token: str = "") -> zarr.Array:
    store = zarr_store(store_url, json.loads(options_json) or None)
    return zarr.open_array(store, path=str(level), mode="r+")


@functools.lru_cache(maxsize=64)
def _writer(store_url: str, options_json: str, level: int, token: str) -> ShardWriter | None:
    meta = _array(store_url, options_json, level, token).metadata.to_dict()
    if not supports(meta):
        return None
    url = store_url.rstrip("/") + f"/{level}"
    return ShardWriter(url, meta, json.loads(options_json) or None)


@functools.lru_cache(maxsize=64)
def _reader_of(store_url: str, options_json: str, level: int, token: str) -> ChunkReader | None:
    meta = _array(store_url, options_json, level, token).metadata.to_dict()
    if not supports(meta):
        return None
    return ChunkReader(store_url.rstrip("/") + f"/{level}", meta, json.loads(options_json) or None)


@functools.lru_cache(maxsize=16)
def _jpeg_tiles(source: str, options_json: str, token: str) -> JpegTiles:
    return JpegTiles(source, json.loads(options_json) or None)


def _read_level(job: ConvertJob, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """(3, h, w) of a written level: whole chunks through the chunk reader when aligned."""
    cr = _reader_of(job.store_url, job.store_options, level, job.token)
    p = cr.chunk[1] if cr is not None else 0
    if cr is None or x % p or y % p:
        arr = _array(job.store_url, job.store_options, level, job.token)
        return np.asarray(arr[:, y : y + h, x : x + w])
    ny, nx = -(-h // p), -(-w // p)
    chunks = [(0, y // p + i, x // p + j) for i in range(ny) for j in range(nx)]
    out = np.empty((3, ny * p, nx * p), np.uint8)
    for (_, cy, cx), a in zip(chunks, (cr.read_chunk(c) for c in chunks), strict=True):
        out[
            :, (cy - y // p) * p : (cy - y // p + 1) * p, (cx - x // p) * p : (cx - x // p + 1) * p
        ] = a
    return out[:, :h, :w]


def _marker_key(level: int, sy: int, sx: int) -> str:
    return f"{PROGRESS_PREFIX}/{level}/{sy}.{sx}"


class ShardDone(NamedTuple):
    """What one shard task did: megapixels written, and its seconds spent reading (and decoding)
    the source or the level below, encoding, and writing (shard object and marker)."""

    megapixels: float
    read_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0


def write_shard(job: ConvertJob, plan: LevelPlan, sy: int, sx: int) -> ShardDone:
    """Read and write one shard, then its progress marker.

    Args:
        job: the slide and the store.
        plan: the level.
        sy, sx: the shard's row and column in the level's shard grid.

    Returns:
        Megapixels written and where the task's time went.
    """
    t0 = time.perf_counter()
    s = job.shard
    y, x = sy * s, sx * s
    h, w = min(s, plan.height - y), min(s, plan.width - x)
    kind, src = plan.origin.split(":")
    writer = _writer(job.store_url, job.store_options, plan.index, job.token)
    if plan.jpeg is not None and writer is not None and writer.jpeg is not None:
        n, k = writer.per_shard[1], plan.jpeg.per_tile  # patches per shard / per source tile
        rows, cols = range(sy * n, sy * n + n), range(sx * n, sx * n + n)
        tiles = _jpeg_tiles(job.source, job.source_options, job.token).tiles(
            plan.jpeg.page,
            range(rows.start // k, -(-rows.stop // k)),
            range(cols.start // k, -(-cols.stop // k)),
        )
        t1 = time.perf_counter()  # cutting tiles into patches (lossless) counts as encoding
        patches = cut_patches(plan.jpeg, tiles, rows, cols) if plan.jpeg.cut else tiles
        t2 = time.perf_counter()
        writer.write_encoded(
            {(0, r - sy * n, c - sx * n): b for (r, c), b in patches.items()}, (0, sy, sx)
        )
        _mark_done(job, plan, sy, sx)
        return ShardDone(h * w / 1e6, t1 - t0, t2 - t1, time.perf_counter() - t2)
    if kind == "source":
        chw = _reader(job.source, job.reader, job.source_options, job.token).read_region_chw(
            int(src), x, y, w, h
        )
    else:
        below = _read_level(job, int(src), 2 * x, 2 * y, 2 * w, 2 * h)
        chw = downsample2x(below)
    t1 = time.perf_counter()
    if writer is not None:
        data = writer.encode(chw, (0, sy, sx))
        t2 = time.perf_counter()
        writer.put(data, (0, sy, sx))
    else:
        t2 = t1
        arr = _array(job.store_url, job.store_options, plan.index, job.token)
        arr[:, y : y + h, x : x + w] = chw  # zarr encodes and writes: counted as writing
    _mark_done(job, plan, sy, sx)
    return ShardDone(h * w / 1e6, t1 - t0, t2 - t1, time.perf_counter() - t2)


def _mark_done(job: ConvertJob, plan: LevelPlan, sy: int, sx: int) -> None:
    fs, root = filesystem(job.store_url, json.loads(job.store_options) or None)
    marker = root + "/" + _marker_key(plan.index, sy, sx)
    if not is_remote(job.store_url):
        fs.makedirs(marker.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(marker, b"")


def downsample2x(chw: np.ndarray) -> np.ndarray:
    """2x2 mean (rounded half up) of a (c, 2h, 2w) uint8 block -> (c, h, w); odd edges dropped."""
    _, h2, w2 = chw.shape
    a = chw[:, : h2 // 2 * 2, : w2 // 2 * 2]
    s = a[:, 0::2, 0::2].astype(np.uint16)  # sums in quarter-size arrays: little memory
    s += a[:, 1::2, 0::2]
    s += a[:, 0::2, 1::2]
    s += a[:, 1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def run_shards_locally(tasks: list[ShardTask], on_done: Callable[[ShardDone], None]) -> None:
    """Write shards one after another in this thread (no Dask; for tests and tiny images)."""
    for t in tasks:
        on_done(write_shard(*t))


def thread_shard_runner(pool: Executor) -> ShardRunner:
    """Run a batch of shard tasks on a thread pool of this process (no Dask: for jobs one
    machine's threads finish sooner than a cluster starts). The first failure cancels the
    tasks not yet started and is raised once the running ones have stopped."""

    def run(tasks: list[ShardTask], on_done: Callable[[ShardDone], None]) -> None:
        futures = [pool.submit(write_shard, *t) for t in tasks]
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise

    return run
