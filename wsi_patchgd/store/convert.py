"""Lazy, shard-aligned conversion of slides into stores, on any Dask cluster.

One task per shard (read the source region or the level below, write one shard object, write a
progress marker), so no two tasks write the same object and memory stays bounded by
(threads x one shard) whatever the slide size. Levels are written coarser-after-finer: each
level comes from the source's own level where one exists at that 2x step, else by 2x2 mean of
the level just written (read back from the store). Then the tissue mask and the per-patch tissue
tables, then the attributes with ``complete: true``, last.

Resuming: a store without ``complete`` is resumed (shards with a marker are skipped); a
complete store is skipped; ``overwrite`` rebuilds into a sibling ``*.rebuild`` store and swaps it
in only when complete, so a killed rebuild never loses the complete store.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError, WsiPatchGDError
from ..io import StorageOptions, filesystem, is_remote, local_path, zarr_store
from ..readers import SlideReader, open_slide
from ..tissue import TissueParams, detect_tissue, patch_tissue_fractions, summed_area_table
from .chunk_reader import ChunkReader, supports
from .format import (
    ATTR_KEY,
    FILL_VALUE,
    FORMAT_VERSION,
    PROGRESS_PREFIX,
    compressors,
    ome_multiscales,
)
from .jpeg import JpegLevel, JpegTiles, jpeg_levels
from .shard_writer import ShardWriter


@dataclass(frozen=True)
class ConvertOptions:
    """How slides become stores.

    Attributes:
        patch_size: chunk side P (the training patch size), pixels.
        shard_patches: shard side in patches (shard = P * shard_patches pixels).
        max_levels: at most this many levels (None: down to ``min_level_size``).
        min_level_size: stop adding levels when the longer side would fall below this.
        codec: lossless codec name (see :data:`wsi_patchgd.store.format.CODECS`).
        reader: ``auto`` or a reader name.
        tissue: tissue-detection parameters (recorded in the store).
        mask_max_size: the mask is computed on the finest level whose longer side is <= this
            (1024 keeps a conversion's peak memory well under 500 MB; the per-patch tables
            are area-weighted, so a 256 px patch of a 64k slide still gets a fraction from
            4 x 4 mask pixels).
        overwrite: rebuild complete stores.
    """

    patch_size: int = 256
    shard_patches: int = 8
    max_levels: int | None = None
    min_level_size: int = 512
    codec: str = "blosc-lz4"
    reader: str = "auto"
    tissue: TissueParams = field(default_factory=TissueParams)
    mask_max_size: int = 1024
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.patch_size < 8 or self.patch_size > 8192:
            raise WsiPatchGDError(f"patch_size={self.patch_size}: use 8..8192 (256 is usual)")
        if self.shard_patches < 1:
            raise WsiPatchGDError(f"shard_patches={self.shard_patches}: must be >= 1")
        if self.max_levels is not None and self.max_levels < 1:
            raise WsiPatchGDError(f"levels={self.max_levels}: must be >= 1")
        compressors(self.codec)  # validates the name

    @property
    def shard_size(self) -> int:
        return self.patch_size * self.shard_patches


@dataclass
class SlideResult:
    """One line of the conversion report."""

    source: str
    store: str
    status: str  # ok | failed | skipped
    reason: str | None = None
    seconds: float = 0.0
    megapixels: float = 0.0
    levels: int = 0
    resumed: bool = False


@dataclass(frozen=True)
class _LevelPlan:
    index: int
    height: int
    width: int
    downsample: float
    origin: str  # "source:<j>" or "downsample:<i-1>"
    jpeg: JpegLevel | None = None  # source JPEG tiles stored unchanged (codec "jpeg")


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to write shards of one slide (picklable)."""

    source: str
    reader: str
    source_options: str  # JSON
    store_url: str
    store_options: str  # JSON
    shard: int
    token: str  # one per conversion: worker-side caches never outlive it


# --------------------------------------------------------------------------------------------
# worker side


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


def _read_level(job: _Job, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
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


def _write_shard(job: _Job, plan: _LevelPlan, sy: int, sx: int) -> float:
    """Read and write one shard; returns megapixels written."""
    s = job.shard
    y, x = sy * s, sx * s
    h, w = min(s, plan.height - y), min(s, plan.width - x)
    kind, src = plan.origin.split(":")
    writer = _writer(job.store_url, job.store_options, plan.index, job.token)
    if plan.jpeg is not None and writer is not None:
        n = writer.per_shard[1]
        tiles = _jpeg_tiles(job.source, job.source_options, job.token).tiles(
            plan.jpeg.page, range(sy * n, sy * n + n), range(sx * n, sx * n + n)
        )
        writer.write_encoded(
            {(0, r - sy * n, c - sx * n): b for (r, c), b in tiles.items()}, (0, sy, sx)
        )
        _mark_done(job, plan, sy, sx)
        return h * w / 1e6
    if kind == "source":
        rgb = _reader(job.source, job.reader, job.source_options, job.token).read_region(
            int(src), x, y, w, h
        )
        chw = rgb.transpose(2, 0, 1)  # a view: the writer copies chunk by chunk
    else:
        below = _read_level(job, int(src), 2 * x, 2 * y, 2 * w, 2 * h)
        chw = downsample2x(below)
    if writer is not None:
        writer.write(chw, (0, sy, sx))
    else:
        arr = _array(job.store_url, job.store_options, plan.index, job.token)
        arr[:, y : y + h, x : x + w] = chw
    _mark_done(job, plan, sy, sx)
    return h * w / 1e6


def _mark_done(job: _Job, plan: _LevelPlan, sy: int, sx: int) -> None:
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


# --------------------------------------------------------------------------------------------
# client side


def plan_levels(reader: SlideReader, options: ConvertOptions) -> list[_LevelPlan]:
    """Levels of the store: source levels at 2x steps where they exist, else 2x downsamples."""
    base = reader.levels[0]
    plans = [_LevelPlan(0, base.height, base.width, 1.0, "source:0")]
    while options.max_levels is None or len(plans) < options.max_levels:
        prev = plans[-1]
        h, w = prev.height // 2, prev.width // 2
        if max(h, w) < options.min_level_size or min(h, w) < 1:
            break
        ds = 2.0 ** len(plans)
        origin = f"downsample:{prev.index}"
        for j, lv in enumerate(reader.levels):
            if (
                j > 0
                and abs(lv.downsample / ds - 1) < 0.02
                and abs(lv.height - h) <= 1
                and abs(lv.width - w) <= 1
                and prev.origin.startswith("source")
            ):
                origin, h, w, ds = f"source:{j}", lv.height, lv.width, lv.downsample
                break
        plans.append(_LevelPlan(len(plans), h, w, ds, origin))
    return plans


def with_passthrough(plans: list[_LevelPlan], pages: list[JpegLevel]) -> list[_LevelPlan]:
    """Mark the source levels whose JPEG tiles line up with the chunk grid (same size, tile =
    patch) to be copied unchanged."""
    by_size = {(jl.height, jl.width): jl for jl in pages}
    return [
        replace(pl, jpeg=by_size.get((pl.height, pl.width)))
        if pl.origin.startswith("source:")
        else pl
        for pl in plans
    ]


def source_identity(source: str, storage_options: StorageOptions | None) -> dict[str, Any]:
    """Name, size and modification time of the source file (what 'same source' means)."""
    fs, path = filesystem(source, storage_options)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated")
    if hasattr(mtime, "isoformat"):
        mtime = mtime.isoformat()
    return {
        "name": os.path.basename(path.rstrip("/")),
        "url": source,
        "size": int(info.get("size") or 0),
        "mtime": mtime if isinstance(mtime, (int, float, str)) or mtime is None else str(mtime),
    }


def _store_state(url: str, storage_options: StorageOptions | None) -> dict[str, Any] | None:
    """Our attributes of an existing store at url, {} for a non-store, None if nothing there."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path + "/zarr.json"):
        return None if not fs.exists(path) else {}
    try:
        group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
    except Exception:
        return {}
    return dict(group.attrs.get(ATTR_KEY) or {})  # type: ignore[arg-type]


def _create_store(
    url: str,
    storage_options: StorageOptions | None,
    reader: SlideReader,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> None:
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="w")
    p, s = options.patch_size, options.shard_size
    for pl in plans:
        codec: dict[str, Any] = (
            {"serializer": pl.jpeg.codec(), "compressors": None}
            if pl.jpeg is not None
            else {"compressors": compressors(options.codec)}
        )
        group.create_array(
            str(pl.index),
            shape=(3, pl.height, pl.width),
            dtype="uint8",
            chunks=(3, p, p),
            shards=(3, s, s),
            fill_value=FILL_VALUE,
            dimension_names=["c", "y", "x"],
            **codec,
        )
    group.attrs.update(
        {
            "ome": ome_multiscales(identity["name"], [pl.downsample for pl in plans], reader.mpp),
            ATTR_KEY: _meta(reader, plans, options, identity, complete=False),
        }
    )


def _meta(
    reader: SlideReader,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
    complete: bool,
    tissue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "source": identity,
        "reader": reader.name,
        "vendor": reader.vendor,
        "mpp": reader.mpp,
        "objective_power": reader.objective_power,
        "patch_size": options.patch_size,
        "shard_size": options.shard_size,
        "codec": options.codec,
        "levels": [
            {
                "shape": [3, pl.height, pl.width],
                "downsample": pl.downsample,
                "origin": pl.origin,
                "codec": "jpeg (source tiles, unchanged)"
                if pl.jpeg is not None
                else ("blosc-lz4" if options.codec == "jpeg" else options.codec),
            }
            for pl in plans
        ],
        "tissue": tissue or {"params": options.tissue.to_dict()},
        "complete": complete,
    }


def _done_markers(url: str, storage_options: StorageOptions | None) -> set[tuple[int, int, int]]:
    fs, path = filesystem(url, storage_options)
    base = path + "/" + PROGRESS_PREFIX
    done: set[tuple[int, int, int]] = set()
    try:
        names = fs.find(base)
    except FileNotFoundError:
        return done
    for n in names:
        level, rest = n[len(base) + 1 :].split("/", 1)
        sy, sx = rest.split(".")
        done.add((int(level), int(sy), int(sx)))
    return done


def _finish_tissue(
    url: str,
    storage_options: StorageOptions | None,
    plans: list[_LevelPlan],
    options: ConvertOptions,
) -> dict[str, Any]:
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="r+")
    lvl = next((pl for pl in plans if max(pl.height, pl.width) <= options.mask_max_size), plans[-1])
    level_array: Any = group[str(lvl.index)]
    thumb = np.asarray(level_array[:]).transpose(1, 2, 0)
    mask = detect_tissue(thumb, options.tissue)
    if "tissue" in group:
        del group["tissue"]
    tg = group.create_group("tissue")
    tg.create_array("mask", data=mask.astype(bool), chunks=mask.shape, overwrite=True)
    fr = tg.create_group("fraction")
    sat = summed_area_table(mask)  # one for every level
    for pl in plans:
        grid = (
            (pl.height + options.patch_size - 1) // options.patch_size,
            (pl.width + options.patch_size - 1) // options.patch_size,
        )
        scale = pl.downsample / lvl.downsample  # mask pixels per pixel of this level
        fractions = patch_tissue_fractions(mask, scale, options.patch_size, grid, sat)
        fr.create_array(str(pl.index), data=fractions.astype(np.float32), overwrite=True)
    return {
        "params": options.tissue.to_dict(),
        "mask_level": lvl.index,
        "mask_downsample": lvl.downsample,
        "fraction": float(mask.mean()),
    }


def _remove(url: str, storage_options: StorageOptions | None) -> None:
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(local_path(url), ignore_errors=True)


def _swap_in(tmp: str, dest: str, storage_options: StorageOptions | None) -> None:
    """Replace dest by the complete store tmp (local: two renames, then delete the old)."""
    if is_remote(dest):
        fs, dpath = filesystem(dest, storage_options)
        _, tpath = filesystem(tmp, storage_options)
        if fs.exists(dpath):
            fs.rm(dpath, recursive=True)
        fs.mv(tpath, dpath, recursive=True)
        return
    d, t = local_path(dest), local_path(tmp)
    old = d.with_name(f".{d.name}.old-{uuid.uuid4().hex[:8]}")
    if d.exists():
        os.rename(d, old)
    os.rename(t, d)
    shutil.rmtree(old, ignore_errors=True)


ShardRunner = Callable[[list[tuple[_Job, _LevelPlan, int, int]], Callable[[float], None]], None]


def run_shards_locally(
    tasks: list[tuple[_Job, _LevelPlan, int, int]], on_done: Callable[[float], None]
) -> None:
    """Write shards one after another in this thread (no Dask; for tests and tiny images)."""
    for t in tasks:
        on_done(_write_shard(*t))


def convert_slide(
    source: str,
    dest: str,
    options: ConvertOptions | None = None,
    *,
    source_options: StorageOptions | None = None,
    store_options: StorageOptions | None = None,
    run_shards: ShardRunner = run_shards_locally,
    on_progress: Callable[[float], None] | None = None,
    on_plan: Callable[[float], None] | None = None,
) -> SlideResult:
    """Convert one slide into a store at ``dest`` (skip if complete, resume if incomplete).

    Args:
        source: slide path or URL.
        dest: store path or URL.
        options: conversion options.
        source_options, store_options: fsspec options for the two URLs.
        run_shards: executes the shard tasks of one level (Dask in :func:`convert_many`).
        on_progress: called with megapixels after each shard.
        on_plan: called once with the megapixels still to write.

    Returns:
        The report line; failures raise instead (see :func:`convert_many` for batch handling).

    Raises:
        SlideReadError: the source cannot be read.
        StoreError: dest holds something else (a different slide, or not a store).
    """
    options = options or ConvertOptions()
    t0 = time.perf_counter()
    with open_slide(source, source_options, options.reader) as reader:
        identity = source_identity(source, source_options)
        plans = plan_levels(reader, options)
        if options.codec == "jpeg":
            plans = with_passthrough(plans, jpeg_levels(source, options.patch_size, source_options))
        try:
            target, resumed = _prepare_target(reader, dest, store_options, plans, options, identity)
        except _Skip:
            return SlideResult(source, dest, "skipped", "already complete", levels=len(plans))
        done = _done_markers(target, store_options) if resumed else set()
        job = _Job(
            source=source,
            reader=reader.name if reader.name != "store" else "store",
            source_options=json.dumps(dict(source_options or {}), sort_keys=True),
            store_url=target,
            store_options=json.dumps(dict(store_options or {}), sort_keys=True),
            shard=options.shard_size,
            token=uuid.uuid4().hex,
        )
        per_level = []
        todo_mp = 0.0
        for pl in plans:
            ny = (pl.height + job.shard - 1) // job.shard
            nx = (pl.width + job.shard - 1) // job.shard
            tasks = [
                (job, pl, sy, sx)
                for sy in range(ny)
                for sx in range(nx)
                if (pl.index, sy, sx) not in done
            ]
            per_level.append(tasks)
            todo_mp += (
                sum(
                    min(job.shard, pl.height - sy * job.shard)
                    * min(job.shard, pl.width - sx * job.shard)
                    for _, _, sy, sx in tasks
                )
                / 1e6
            )
        if on_plan:
            on_plan(todo_mp)
        written = 0.0

        def _done(mp: float) -> None:
            nonlocal written
            written += mp
            if on_progress:
                on_progress(mp)

        for tasks in per_level:  # a level needs the one below it finished
            if tasks:
                run_shards(tasks, _done)
        tissue = _finish_tissue(target, store_options, plans, options)
        group = zarr.open_group(zarr_store(target, store_options), mode="r+")
        meta = _meta(reader, plans, options, identity, complete=True, tissue=tissue)
        group.attrs[ATTR_KEY] = meta  # written last: the store is complete from here on
        fs, root = filesystem(target, store_options)
        if fs.exists(root + "/" + PROGRESS_PREFIX):
            fs.rm(root + "/" + PROGRESS_PREFIX, recursive=True)
    if target != dest:
        _swap_in(target, dest, store_options)
    return SlideResult(
        source,
        dest,
        "ok",
        seconds=time.perf_counter() - t0,
        megapixels=written,
        levels=len(plans),
        resumed=resumed,
    )


def _same_source(state: dict[str, Any], identity: dict[str, Any]) -> bool:
    src = state.get("source", {})
    return bool(src.get("name") == identity["name"] and src.get("size") == identity["size"])


def _prepare_target(
    reader: SlideReader,
    dest: str,
    store_options: StorageOptions | None,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> tuple[str, bool]:
    """Where to write and whether that resumes a partial store; raises on foreign contents."""
    state = _store_state(dest, store_options)
    if state == {}:
        raise StoreError(
            f"{dest}: exists and is not a wsi_patchgd store; move it away or choose another --out"
        )
    target = dest
    if state is not None and state.get("complete") is True:
        if not options.overwrite:
            if not _same_source(state, identity):
                raise StoreError(
                    f"{dest}: a complete store of another source "
                    f"({state.get('source', {}).get('name')}) is there; use --overwrite to "
                    "replace it"
                )
            raise _Skip()
        target = dest.rstrip("/") + ".rebuild"  # the complete store stays until the swap
        state = _store_state(target, store_options)
    elif (
        state is not None
        and not options.overwrite
        and not (_same_source(state, identity) and _compatible(state, plans, options))
    ):
        raise StoreError(
            f"{dest}: an incomplete store from another source or other settings is there; "
            "use --overwrite to rebuild it"
        )
    resumed = bool(state and _same_source(state, identity) and _compatible(state, plans, options))
    if not resumed:
        _remove(target, store_options)
        _create_store(target, store_options, reader, plans, options, identity)
    return target, resumed


class _Skip(Exception):
    """The store is already complete."""


def _compatible(state: dict[str, Any], plans: list[_LevelPlan], options: ConvertOptions) -> bool:
    return (
        state.get("patch_size") == options.patch_size
        and state.get("shard_size") == options.shard_size
        and state.get("codec") == options.codec
        and [lv.get("shape") for lv in state.get("levels", [])]
        == [[3, pl.height, pl.width] for pl in plans]
    )


def store_name(source: str) -> str:
    """Store directory name for a source: file name without its extension(s), plus ``.zarr``."""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] + ".zarr"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem + ".zarr"


def result_dict(r: SlideResult) -> dict[str, Any]:
    return asdict(r)
