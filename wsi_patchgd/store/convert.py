"""Lazy, shard-aligned conversion of slides into stores, on any Dask cluster.

One task per shard (read the source region or the level below, write one shard object, write a
progress marker), so no two tasks write the same object and memory stays bounded by
(threads x one shard) whatever the slide size. Levels are written coarser-after-finer: each
level comes from the source's own level where one exists at that 2x step, else by 2x2 mean of
the level just written (read back from the store). Then the tissue mask and the per-patch tissue
tables, then the attributes with ``complete: true``, last.

Resuming: a store without ``complete`` is resumed (shards with a marker are skipped, leftover
``*.partial`` files deleted); a complete store is skipped. ``complete`` means complete: it is
written only after every array the format lists was found with its shape, and a store marked
complete that lacks one (say ``tissue/mask`` was deleted) is treated as incomplete and repaired.

One job per store: a conversion holds ``<store>.lock`` (:class:`StoreLock`) from before it looks
at the store until after the last write; a second job waits ``lock_wait`` seconds, then reports
the slide ``skipped`` (locked by another job). A lock whose holder is gone (its process on this
machine has exited, or no heartbeat for ``lock_stale_after`` s) is taken over.

``overwrite`` rebuilds into a sibling ``<store>.rebuild`` and switches it in only when it is
complete and verified (:func:`_switch`): locally by two renames (old moved aside, new moved in),
on object storage by deleting the old store (its ``zarr.json`` first) and copying the new one
over (its ``zarr.json`` last). While the store itself is absent or incomplete,
:class:`~wsi_patchgd.store.SlideStore` reads the complete store beside it, and the next run on
that store (any options) finishes the switch first, so a kill at any point leaves the old or the
new complete store readable.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import threading
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
    LOCK_SUFFIX,
    OLD_SUFFIX,
    PROGRESS_PREFIX,
    REBUILD_SUFFIX,
    compressors,
    ome_multiscales,
)
from .jpeg import JpegLevel, JpegTiles, jpeg_levels
from .shard_writer import ShardWriter
from .slide_store import store_keys, verify_store


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
        lock_wait: seconds to wait for a store another job is converting before reporting it
            ``skipped`` (locked by another job).
        lock_stale_after: a lock whose heartbeat (renewed every quarter of this) is older than
            this many seconds is taken over; so is one whose process on this machine is gone.
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
    lock_wait: float = 5.0
    lock_stale_after: float = 120.0

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


def write_shard(job: _Job, plan: _LevelPlan, sy: int, sx: int) -> float:
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
# one job per store


class StoreLocked(StoreError):
    """Another job holds the store's lock (or took it over from this one)."""


@functools.lru_cache(maxsize=1)
def _host_id() -> str:
    """This machine, boot and PID namespace: a process id means something only within all
    three (host names alone can repeat across cloned machines)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_lock(raw: bytes) -> dict[str, Any]:
    try:
        h = json.loads(raw)
    except ValueError:
        return {}
    return h if isinstance(h, dict) else {}


class StoreLock:
    """At most one conversion per store: an object ``<store>.lock`` beside it, created only if
    absent.

    Local paths: ``os.open(O_CREAT | O_EXCL)``. Object storage: a conditional put
    (``If-None-Match: *``, which S3, MinIO and moto honour; s3fs ``mode="create"``), then read
    back (the owner id must be ours: a store whose create-if-absent is not atomic gets a best
    effort). The holder renews a heartbeat every ``stale_after / 4`` s from a thread (locally the
    file's mtime, remotely the recorded time, a put conditional on the lock's ETag on S3). A lock
    is stale when its heartbeat is older than ``stale_after`` s or when its process, on this
    machine and PID namespace, has exited (a killed job); a stale lock is taken over so that only
    one of several jobs doing so wins (S3: a put conditional on the stale object's ETag; local:
    under ``flock`` of the stale file, re-checked to be the same file, then replaced). A holder
    that finds the lock no longer its own stops before its next irreversible step
    (:meth:`check`).
    """

    def __init__(
        self,
        store_url: str,
        storage_options: StorageOptions | None = None,
        stale_after: float = 120,
    ) -> None:
        self.url = store_url.rstrip("/") + LOCK_SUFFIX
        self.fs, self.path = filesystem(self.url, storage_options)
        self.remote = is_remote(self.url)
        self.s3 = self.url.split("://", 1)[0] in ("s3", "s3a")
        self.stale_after = float(stale_after)
        self.owner = uuid.uuid4().hex
        self.since = time.time()
        self.holder: dict[str, Any] | None = None  # the other job's, after a failed acquire
        self.lost = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lock object -------------------------------------------------------------------
    def _content(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": _host_id(),
                "pid": os.getpid(),
                "since": self.since,
                "heartbeat": time.time(),
            }
        ).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(holder, ETag) of the lock there now, (None, None) when there is none."""
        if not self.remote:
            try:
                with open(self.path, "rb") as fh:
                    raw = fh.read()
                    mtime = os.fstat(fh.fileno()).st_mtime
            except FileNotFoundError:
                return None, None
            return {**_parse_lock(raw), "heartbeat": mtime}, None
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)  # the ETag first: the content is then as new or newer
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        h = _parse_lock(raw)
        if not isinstance(h.get("heartbeat"), (int, float)):
            lm = info.get("LastModified")
            h["heartbeat"] = lm.timestamp() if hasattr(lm, "timestamp") else 0.0
        return h, info.get("ETag")

    def _stale(self, h: dict[str, Any]) -> bool:
        pid = h.get("pid")
        if h.get("host") == _host_id() and isinstance(pid, int) and not _pid_alive(pid):
            return True
        return time.time() - float(h.get("heartbeat") or 0.0) > self.stale_after

    def _create(self) -> bool:
        data = self._content()
        if not self.remote:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return self._confirm()

    def _confirm(self) -> bool:
        """Read the lock back: is it ours? (and remember its ETag)."""
        h, tag = self._read()
        if h is None or h.get("owner") != self.owner:
            return False
        self._etag = tag
        return True

    def _take_over(self, tag: str | None) -> bool:
        """Replace the stale lock there by ours; False when another job was faster."""
        if not self.remote:
            return self._take_over_local()
        if self.s3 and tag:
            try:
                self.fs.pipe_file(self.path, self._content(), IfMatch=tag)
            except OSError:  # precondition failed (another job took it), or gone
                return False
            return self._confirm()
        try:  # other object stores: best effort
            self.fs.rm(self.path)
        except FileNotFoundError:
            pass
        return self._create()

    def _take_over_local(self) -> bool:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another job is taking it over
            st = os.fstat(fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                return False
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                return False  # replaced meanwhile
            if not self._stale({**_parse_lock(os.read(fd, 1 << 16)), "heartbeat": st.st_mtime}):
                return False
            os.unlink(self.path)
        finally:
            os.close(fd)
        return self._create()

    # -- the protocol ----------------------------------------------------------------------
    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait`` s for another job; False if it still holds it
        (its lock is then in :attr:`holder`)."""
        deadline = time.monotonic() + max(0.0, wait)
        vanished = 0
        while True:
            if self._create():
                break
            h, tag = self._read()
            if h is None:  # released just now: try again at once (but not forever)
                vanished += 1
                if vanished > 100:
                    raise StoreError(f"{self.url}: cannot create this lock file; check the path")
                time.sleep(0.01)
                continue
            if self._stale(h) and self._take_over(tag):
                break
            if time.monotonic() >= deadline:
                self.holder = h
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock {self.url}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.stale_after / 4)):
            try:
                if not self._refresh():
                    self.lost = True
                    return
            except Exception:  # a transient storage error: the next beat tries again
                continue

    def _refresh(self) -> bool:
        """Renew the heartbeat; False when the lock is no longer ours."""
        if self.remote and self.s3 and self._etag:
            try:
                out = self.fs.pipe_file(self.path, self._content(), IfMatch=self._etag)
            except OSError:
                return self._confirm()  # a transient error, or it is no longer ours
            tag = out.get("ETag") if isinstance(out, dict) else None
            if tag:
                self._etag = tag
                return True
            return self._confirm()
        h, _ = self._read()
        if h is None or h.get("owner") != self.owner:
            return False
        if self.remote:
            self.fs.pipe_file(self.path, self._content())
        else:
            os.utime(self.path)
        return True

    def check(self) -> None:
        """Raise :class:`StoreLocked` unless this job still holds the lock (called before each
        irreversible step)."""
        h, _ = self._read()
        if self.lost or h is None or h.get("owner") != self.owner:
            self.lost = True
            raise StoreLocked(
                f"{self.url}: this job lost the store's lock to another job (its heartbeat was "
                f"over {self.stale_after:g} s old); rerun it when the other job has finished"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            h, _ = self._read()
            if h is not None and h.get("owner") == self.owner:
                if self.remote:
                    self.fs.rm(self.path)
                else:
                    os.unlink(self.path)
        except OSError:
            pass  # not fatal: a lock we cannot delete is taken over once stale (lock_stale_after)

    def busy_reason(self) -> str:
        """The report's reason for a store another job holds."""
        h = self.holder or {}
        since = h.get("since")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            if isinstance(since, (int, float))
            else "?"
        )
        host = str(h.get("host", "?")).split("/", 1)[0]
        return (
            f"locked by another job (pid {h.get('pid', '?')} on {host}, since {when}; "
            f"lock {self.url})"
        )


#: Test hook: called with the name of each step of an ``--overwrite`` switch (``switch:*``,
#: ``rebuild:complete``); tests kill the process there. None in normal use.
_fault_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


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


def create_store(
    url: str,
    storage_options: StorageOptions | None,
    reader: SlideReader,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> None:
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="w")
    for pl in plans:
        _create_level(group, pl, options)
    group.attrs.update(
        {
            "ome": ome_multiscales(identity["name"], [pl.downsample for pl in plans], reader.mpp),
            ATTR_KEY: store_metadata(reader, plans, options, identity, complete=False),
        }
    )


def _create_level(group: zarr.Group, pl: _LevelPlan, options: ConvertOptions) -> None:
    p, s = options.patch_size, options.shard_size
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


def store_metadata(
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


def _done_markers(
    url: str, storage_options: StorageOptions | None
) -> tuple[set[tuple[int, int, int]], set[int]]:
    """(level, sy, sx) of the shards written, and the levels written whole."""
    done: set[tuple[int, int, int]] = set()
    whole: set[int] = set()
    for k in store_keys(url, storage_options):
        if not k.startswith(PROGRESS_PREFIX + "/"):
            continue
        level, rest = k[len(PROGRESS_PREFIX) + 1 :].split("/", 1)
        if rest == "all":
            whole.add(int(level))
            continue
        sy, sx = rest.split(".")
        done.add((int(level), int(sy), int(sx)))
    return done, whole


def _finish_tissue(
    url: str,
    storage_options: StorageOptions | None,
    plans: list[_LevelPlan],
    options: ConvertOptions,
) -> dict[str, Any]:
    _remove_prefix(url, storage_options, "tissue")  # whatever a killed run left, torn or not
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="r+")
    lvl = next((pl for pl in plans if max(pl.height, pl.width) <= options.mask_max_size), plans[-1])
    level_array: Any = group[str(lvl.index)]
    thumb = np.asarray(level_array[:]).transpose(1, 2, 0)
    mask = detect_tissue(thumb, options.tissue)
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


def _find(fs: Any, path: str) -> list[str]:
    fs.invalidate_cache(path)
    try:
        return list(fs.find(path))
    except FileNotFoundError:
        return []


def _remove_prefix(url: str, storage_options: StorageOptions | None, rel: str) -> None:
    """Delete everything under ``url/rel``."""
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        keys = _find(fs, f"{path}/{rel}")
        if keys:
            fs.rm(keys)
    else:
        shutil.rmtree(local_path(url) / rel, ignore_errors=True)


def _remove(url: str, storage_options: StorageOptions | None, step: str | None = None) -> None:
    """Delete a store, its root ``zarr.json`` first, so that a half-deleted store is never taken
    for one (``step``: the fault-hook name of the moment in between)."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.invalidate_cache(path)
        if fs.exists(path + "/zarr.json"):
            fs.rm(path + "/zarr.json")
        if step:
            _step(step)
        keys = _find(fs, path)
        if keys:
            fs.rm(keys)
        return
    p = local_path(url)
    try:
        os.unlink(p / "zarr.json")
    except (FileNotFoundError, NotADirectoryError):
        pass
    if step:
        _step(step)
    shutil.rmtree(p, ignore_errors=True)


def _rebuild_url(dest: str) -> str:
    return dest.rstrip("/") + REBUILD_SUFFIX


def _old_url(dest: str) -> str:
    return dest.rstrip("/") + OLD_SUFFIX


def _switch(dest: str, storage_options: StorageOptions | None) -> None:
    """Put the complete, verified ``dest.rebuild`` in the place of ``dest``.

    At every moment the old or the new complete store is readable (``SlideStore`` reads the
    rebuild while ``dest`` is absent or incomplete), and a rerun that finds the rebuild
    complete calls this again to finish (:func:`_recover`). Locally: ``dest`` is renamed to
    ``dest.old``, the rebuild to ``dest``, then ``dest.old`` is deleted. On object storage, where
    a rename is a copy and a delete: ``dest`` is deleted (its ``zarr.json`` first), the rebuild's
    objects are copied over, its ``zarr.json`` last, then the rebuild is deleted.
    """
    rebuild = _rebuild_url(dest)
    _step("switch:start")
    if not is_remote(dest):
        d, r, o = local_path(dest), local_path(rebuild), local_path(_old_url(dest))
        if d.exists():
            if o.exists():
                _remove(str(o), None)
            os.rename(d, o)  # readers use the complete rebuild from here
            _step("switch:old-moved-aside")
        os.rename(r, d)
        _step("switch:new-in-place")
        if o.exists():
            _remove(str(o), None, step="switch:old-unmarked")
        return
    fs, dpath = filesystem(dest, storage_options)
    _, rpath = filesystem(rebuild, storage_options)
    d_root, r_root = dpath + "/zarr.json", rpath + "/zarr.json"
    new_root = fs.cat_file(r_root)
    fs.invalidate_cache(dpath)
    if not (fs.exists(d_root) and fs.cat_file(d_root) == new_root):  # else: copied already
        _remove(dest, storage_options, step="switch:old-unmarked")  # readers use the rebuild
        _step("switch:old-deleted")
        src = [k for k in _find(fs, rpath) if k != r_root]
        if src:
            fs.copy(src, [dpath + k[len(rpath) :] for k in src])
        _step("switch:new-copied")
        fs.pipe_file(d_root, new_root)  # the copy is a complete store from here
        _step("switch:new-in-place")
    _remove(rebuild, storage_options, step="switch:rebuild-unmarked")


def _recover(dest: str, storage_options: StorageOptions | None) -> dict[str, Any] | None:
    """Finish what an interrupted ``--overwrite`` left (under the store's lock, first thing).

    A complete, verified ``dest.rebuild`` is the newest store there is: it is switched in.
    The remains of a half-deleted rebuild or old store are deleted; an old store moved aside
    with nothing in its place is put back. Returns the attributes of a store switched in.
    """
    rebuild = _rebuild_url(dest)
    state = _store_state(rebuild, storage_options)
    if state == {}:
        _remove(rebuild, storage_options)  # no zarr.json: a deleted rebuild's remains
    elif state and state.get("complete") is True:
        if not verify_store(rebuild, storage_options, state):
            _switch(dest, storage_options)
            return state
    if not is_remote(dest) and local_path(_old_url(dest)).exists():
        old = _old_url(dest)
        old_state = _store_state(old, storage_options)
        if (
            _store_state(dest, storage_options) is None
            and old_state
            and old_state.get("complete") is True
            and not verify_store(old, storage_options, old_state)
        ):
            os.rename(local_path(old), local_path(dest))  # nothing else is complete: put back
        else:
            _remove(old, storage_options)
    return None


ShardRunner = Callable[[list[tuple[_Job, _LevelPlan, int, int]], Callable[[float], None]], None]


def run_shards_locally(
    tasks: list[tuple[_Job, _LevelPlan, int, int]], on_done: Callable[[float], None]
) -> None:
    """Write shards one after another in this thread (no Dask; for tests and tiny images)."""
    for t in tasks:
        on_done(write_shard(*t))


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
        lock = StoreLock(dest, store_options, options.lock_stale_after)
        if not lock.acquire(options.lock_wait):
            return SlideResult(source, dest, "skipped", lock.busy_reason(), levels=len(plans))
        try:
            switched = _recover(dest, store_options)
            if (
                switched is not None
                and options.overwrite
                and _same_source(switched, identity)
                and _compatible(switched, plans, options)
            ):  # an interrupted --overwrite of this very job had finished its rebuild
                return SlideResult(
                    source,
                    dest,
                    "ok",
                    "finished switching in the store an interrupted --overwrite had rebuilt",
                    seconds=time.perf_counter() - t0,
                    levels=len(plans),
                    resumed=True,
                )
            try:
                target, resumed, damaged = _prepare_target(
                    reader, dest, store_options, plans, options, identity
                )
            except _Skip:
                return SlideResult(source, dest, "skipped", "already complete", levels=len(plans))
            done, whole = _done_markers(target, store_options) if resumed else (set(), set())
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
                    if pl.index not in whole and (pl.index, sy, sx) not in done
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
            meta = store_metadata(reader, plans, options, identity, complete=True, tissue=tissue)
            problems = verify_store(target, store_options, meta, deep=True)
            if problems:
                raise StoreError(
                    f"{target}: conversion left the store without {'; '.join(problems)}; "
                    "rerun `wsi-patchgd convert` to resume it"
                )
            lock.check()
            group = zarr.open_group(zarr_store(target, store_options), mode="r+")
            group.attrs[ATTR_KEY] = meta  # written last: the store is complete from here on
            _remove_prefix(target, store_options, PROGRESS_PREFIX)
            if target != dest:
                _step("rebuild:complete")
                lock.check()
                _switch(dest, store_options)
        finally:
            lock.release()
    return SlideResult(
        source,
        dest,
        "ok",
        f"repaired ({', '.join(damaged)})" if damaged else None,
        seconds=time.perf_counter() - t0,
        megapixels=written,
        levels=len(plans),
        resumed=resumed,
    )


def _same_source(state: dict[str, Any], identity: dict[str, Any]) -> bool:
    src = state.get("source", {})
    return bool(src.get("name") == identity["name"] and src.get("size") == identity["size"])


def _inspect(
    url: str, storage_options: StorageOptions | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """:func:`_store_state`, with a store marked complete that lacks nodes (listed second)
    reported as incomplete. A complete store's leftovers of a killed run (progress markers,
    ``*.partial`` files) are deleted."""
    state = _store_state(url, storage_options)
    if not state or state.get("complete") is not True:
        return state, []
    keys = store_keys(url, storage_options)
    damaged = verify_store(url, storage_options, state, keys=keys)
    if damaged:
        return {**state, "complete": False}, damaged
    _delete_keys(
        url,
        storage_options,
        [k for k in keys if k.startswith(PROGRESS_PREFIX + "/") or k.endswith(".partial")],
    )
    return state, []


def _delete_keys(url: str, storage_options: StorageOptions | None, rel: list[str]) -> None:
    if not rel:
        return
    fs, root = filesystem(url, storage_options)
    if is_remote(url):
        fs.rm([f"{root}/{k}" for k in rel])
        return
    for k in rel:
        try:
            os.remove(f"{root}/{k}")
        except FileNotFoundError:
            pass


def _reopen(
    url: str,
    storage_options: StorageOptions | None,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    damaged: list[str],
) -> None:
    """Make a store of this slide and these settings resumable.

    A damaged complete store (``damaged``: what it lacks) is marked incomplete first, its
    intact levels marked written whole (``.progress/<level>/all``) so that only what is missing
    is written again. A missing level array is created anew and written again with every level
    above it. Leftover ``*.partial`` files of killed shard writes are deleted.
    """
    keys = store_keys(url, storage_options)
    first_missing = next(
        (pl.index for pl in plans if f"{pl.index}/zarr.json" not in keys), len(plans)
    )
    if damaged:
        for pl in plans[:first_missing]:
            _put_marker(url, storage_options, f"{PROGRESS_PREFIX}/{pl.index}/all")
        group = zarr.open_group(zarr_store(url, storage_options), mode="r+")
        meta = dict(group.attrs[ATTR_KEY])  # type: ignore[arg-type]
        meta["complete"] = False
        group.attrs[ATTR_KEY] = meta  # readers refuse it and reruns resume it from here
    if first_missing < len(plans):
        redo = {str(pl.index) for pl in plans[first_missing:]}
        _delete_keys(
            url,
            storage_options,
            [
                k
                for k in keys
                if k.split("/", 1)[0] in redo
                or (k.startswith(PROGRESS_PREFIX + "/") and k.split("/")[1] in redo)
            ],
        )
        group = zarr.open_group(zarr_store(url, storage_options), mode="r+")
        for pl in plans[first_missing:]:
            _create_level(group, pl, options)
    _delete_keys(url, storage_options, [k for k in keys if k.endswith(".partial")])


def _put_marker(url: str, storage_options: StorageOptions | None, rel: str) -> None:
    fs, root = filesystem(url, storage_options)
    path = f"{root}/{rel}"
    if not is_remote(url):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, b"")


def _prepare_target(
    reader: SlideReader,
    dest: str,
    store_options: StorageOptions | None,
    plans: list[_LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> tuple[str, bool, list[str]]:
    """Where to write, whether that resumes a store there, and what a damaged complete store
    there lacked; raises _Skip for a complete store, StoreError on foreign contents."""
    state, damaged = _inspect(dest, store_options)
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
        target = _rebuild_url(dest)  # the complete store stays until the switch
        state, damaged = _inspect(target, store_options)
    elif (
        state is not None
        and not options.overwrite
        and not (_same_source(state, identity) and _compatible(state, plans, options))
    ):
        what = (
            f"a damaged store (without {', '.join(damaged)})" if damaged else "an incomplete store"
        )
        raise StoreError(
            f"{dest}: {what} from another source or other settings is there; "
            "use --overwrite to rebuild it"
        )
    resumed = bool(state and _same_source(state, identity) and _compatible(state, plans, options))
    if resumed:
        _reopen(target, store_options, plans, options, damaged)
    else:
        _remove(target, store_options)
        create_store(target, store_options, reader, plans, options, identity)
    return target, resumed, damaged


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
