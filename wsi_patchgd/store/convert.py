"""Converting one slide into a store: the steps in order, and the report line they give.

One task per shard (read the source region or the level below, write one shard object, write a
progress marker; :mod:`~wsi_patchgd.store.tasks`), so no two tasks write the same object and
memory stays bounded by (threads x one shard) whatever the slide size. Levels are written
coarser-after-finer (:mod:`~wsi_patchgd.store.plan`): each level comes from the source's own
level where one exists at that 2x step, else by 2x2 mean of the level just written. Then the
tissue mask (detected while the levels are written, from the source's own copy of the mask level
where it has one) and the per-patch tissue tables (:mod:`~wsi_patchgd.store.tissue_tables`),
then the attributes with ``complete: true``, last.

Resuming (:mod:`~wsi_patchgd.store.lifecycle`): a store without ``complete`` is resumed (shards
with a marker are skipped, leftover ``*.partial`` files deleted); a complete store is skipped.
``complete`` means complete: it is written only after every array the format lists was found
with its shape, and a store marked complete that lacks one (say ``tissue/mask`` was deleted) is
treated as incomplete and repaired.

One job per store: a conversion holds ``<store>.lock`` (:class:`~wsi_patchgd.store.lock.
StoreLock`) from before it looks at the store until after the last write; a second job waits
``lock_wait`` seconds, then reports the slide ``skipped`` (locked by another job).

``overwrite`` rebuilds into a sibling ``<store>.rebuild`` and switches it in only when it is
complete and verified (:mod:`~wsi_patchgd.store.overwrite`), so a kill at any point leaves the
old or the new complete store readable.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from ..io import StorageOptions, zarr_store
from ..readers import SlideReader, open_slide
from ..readers.tiff_tiles import jpeg_levels
from .format import ATTR_KEY, PROGRESS_PREFIX
from .lifecycle import (
    StoreComplete,
    compatible,
    done_markers,
    prepare_target,
    remove_prefix,
    same_source,
    store_metadata,
    store_state,
)
from .lock import StoreLock
from .overwrite import recover, step, switch_in
from .plan import ConvertOptions, LevelPlan, plan_levels, source_identity, with_passthrough
from .tasks import ConvertJob, ShardDone, ShardRunner, ShardTask, run_shards_locally
from .tissue_tables import early_mask, write_tissue
from .verify import verify_store

#: The stages of a conversion, in order, as :attr:`SlideResult.timings` names them.
STAGES = ("plan", "lock", "create", "shards", "tissue", "finish")


@dataclass
class SlideResult:
    """One line of the conversion report.

    Attributes:
        source, store: the slide and its store.
        status: ``ok``, ``failed`` or ``skipped``.
        reason: why it failed or was skipped (or what an ``ok`` repaired).
        seconds: wall time of the conversion.
        megapixels: pixels written, all levels.
        levels: levels of the store.
        resumed: whether it resumed an incomplete store.
        timings: seconds per stage reached (:data:`STAGES`): ``plan`` (open the source, plan the
            levels), ``lock`` (take the store's lock), ``create`` (finish an interrupted switch,
            create or reopen the store, find the shards to write), ``shards`` (read, encode and
            write them), ``tissue`` (mask and patch tables), ``finish`` (verify, mark complete,
            switch an ``--overwrite`` in, release the lock). They sum to at most ``seconds``.
            Then where the ``shards`` stage's time went, in thread-seconds summed over its
            tasks (so up to threads x its wall time): ``shards.read`` (reading and decoding
            the source, or the level below and its 2x2 mean), ``shards.encode`` (compressing
            the chunks), ``shards.write`` (the shard objects and their markers). Where the
            tissue mask was detected beside the copy: ``tissue.detect`` (reading the mask
            level from the source and detecting tissue) and ``tissue.tables`` (writing the mask
            and the patch tables), seconds of the side thread, mostly hidden behind ``shards``.
    """

    source: str
    store: str
    status: str  # ok | failed | skipped
    reason: str | None = None
    seconds: float = 0.0
    megapixels: float = 0.0
    levels: int = 0
    resumed: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    """Seconds per stage: each :meth:`lap` ends the named stage and starts the next."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> dict[str, float]:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.last)
        self.last = now
        return self.timings

    def total(self) -> float:
        return time.perf_counter() - self.start


def _shard_tasks(
    job: ConvertJob,
    plans: list[LevelPlan],
    done: set[tuple[int, int, int]],
    whole: set[int],
) -> tuple[list[list[ShardTask]], float]:
    """The shard tasks still to run, level by level, and their megapixels."""
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
    return per_level, todo_mp


def _detect_early(
    reader: SlideReader, plans: list[LevelPlan], options: ConvertOptions
) -> tuple[np.ndarray | None, float]:
    """:func:`~wsi_patchgd.store.tissue_tables.early_mask` and the seconds it took."""
    t0 = time.perf_counter()
    return early_mask(reader, plans, options), time.perf_counter() - t0


def _tissue_early(
    mask: Future[tuple[np.ndarray | None, float]] | None,
    reader: SlideReader,
    url: str,
    storage_options: StorageOptions | None,
    plans: list[LevelPlan],
    options: ConvertOptions,
) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """Write the tissue arrays from the source's copy of the mask level (detected already, or
    now), while the levels are written; None, with nothing written, when the mask level cannot
    be had from the source (it exists only once written: :func:`write_tissue` then reads it).
    Also the seconds this side thread spent detecting and writing the tables."""
    m, detect_s = mask.result() if mask is not None else _detect_early(reader, plans, options)
    if m is None:
        return None, {}
    t0 = time.perf_counter()
    entry = write_tissue(url, storage_options, plans, options, m)
    return entry, {"tissue.detect": detect_s, "tissue.tables": time.perf_counter() - t0}


def _batches(plans: list[LevelPlan], per_level: list[list[ShardTask]]) -> list[list[ShardTask]]:
    """The shard tasks in runs that may execute together: a level computed from the level below
    starts a new run (that level must be finished first); levels copied from the source's own
    levels need nothing written before them and share a run."""
    runs: list[list[ShardTask]] = [[]]
    for pl, tasks in zip(plans, per_level, strict=True):
        if pl.origin.startswith("downsample:") and runs[-1]:
            runs.append([])
        runs[-1].extend(tasks)
    return [r for r in runs if r]


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
        run_shards: executes a batch of shard tasks that may run together (a thread pool or
            Dask in :func:`~wsi_patchgd.store.convert_many`).
        on_progress: called with megapixels after each shard.
        on_plan: called once with the megapixels still to write.

    Returns:
        The report line, with seconds per stage; failures raise instead (see
        :func:`~wsi_patchgd.store.convert_many` for batch handling).

    Raises:
        SlideReadError: the source cannot be read.
        StoreError: dest holds something else (a different slide, or not a store).
    """
    options = options or ConvertOptions()
    clock = _Stopwatch()
    with (
        open_slide(source, source_options, options.reader) as reader,
        ThreadPoolExecutor(1, "wsi-tissue") as side,  # tissue while the levels are written
    ):
        identity = source_identity(source, source_options)
        plans = plan_levels(reader, options)
        if options.codec == "jpeg":
            plans = with_passthrough(plans, jpeg_levels(source, options.patch_size, source_options))
        clock.lap("plan")
        lock = StoreLock(dest, store_options, options.lock_stale_after)
        if not lock.acquire(options.lock_wait):
            return SlideResult(
                source,
                dest,
                "skipped",
                lock.busy_reason(),
                levels=len(plans),
                timings=clock.lap("lock"),
            )
        clock.lap("lock")
        # a new store: start detecting tissue now (an existing one may be complete: skipped)
        fresh = store_state(dest, store_options) is None  # nothing there yet
        mask = side.submit(_detect_early, reader, plans, options) if fresh else None
        early: Future[tuple[dict[str, Any] | None, dict[str, float]]] | None = None
        try:
            switched = recover(dest, store_options)
            if (
                switched is not None
                and options.overwrite
                and same_source(switched, identity)
                and compatible(switched, plans, options)
            ):  # an interrupted --overwrite of this very job had finished its rebuild
                timings = clock.lap("create")
                return SlideResult(
                    source,
                    dest,
                    "ok",
                    "finished switching in the store an interrupted --overwrite had rebuilt",
                    seconds=clock.total(),
                    levels=len(plans),
                    resumed=True,
                    timings=timings,
                )
            try:
                target, resumed, damaged = prepare_target(
                    reader, dest, store_options, plans, options, identity
                )
            except StoreComplete:
                return SlideResult(
                    source,
                    dest,
                    "skipped",
                    "already complete",
                    levels=len(plans),
                    timings=clock.lap("create"),
                )
            done, whole = done_markers(target, store_options) if resumed else (set(), set())
            job = ConvertJob(
                source=source,
                reader=reader.name if reader.name != "store" else "store",
                source_options=json.dumps(dict(source_options or {}), sort_keys=True),
                store_url=target,
                store_options=json.dumps(dict(store_options or {}), sort_keys=True),
                shard=options.shard_size,
                token=uuid.uuid4().hex,
            )
            per_level, todo_mp = _shard_tasks(job, plans, done, whole)
            clock.lap("create")
            if on_plan:
                on_plan(todo_mp)
            written = 0.0
            shard_seconds: dict[str, float] = {}

            def _done(d: ShardDone) -> None:
                nonlocal written
                written += d.megapixels
                for part in ("read", "encode", "write"):  # thread-seconds, summed over tasks
                    key = f"shards.{part}"
                    shard_seconds[key] = shard_seconds.get(key, 0.0) + getattr(d, f"{part}_s")
                if on_progress:
                    on_progress(d.megapixels)

            early = side.submit(_tissue_early, mask, reader, target, store_options, plans, options)
            for batch in _batches(plans, per_level):
                run_shards(batch, _done)
            clock.lap("shards")
            tissue, side_seconds = early.result()
            if tissue is None:
                tissue = write_tissue(target, store_options, plans, options)
            clock.lap("tissue")
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
            remove_prefix(target, store_options, PROGRESS_PREFIX)
            if target != dest:
                step("rebuild:complete")
                lock.check()
                switch_in(dest, store_options)
        finally:
            # the tissue thread writes into the store: stopped or finished before the lock goes
            pending: list[Future[Any]] = [
                f for f in (early, mask) if f is not None and not f.cancel()
            ]
            wait(pending)
            lock.release()
    timings = {**clock.lap("finish"), **shard_seconds, **side_seconds}
    return SlideResult(
        source,
        dest,
        "ok",
        f"repaired ({', '.join(damaged)})" if damaged else None,
        seconds=clock.total(),
        megapixels=written,
        levels=len(plans),
        resumed=resumed,
        timings=timings,
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
    """A report line as the JSON report writes it (stage timings included)."""
    return asdict(r)
