"""A store on storage, before and after the shards: its state, creating it, reopening it to
resume or repair, and removing it.

:func:`prepare_target` decides where a conversion writes: into a new store
(:func:`create_store`), into an incomplete (or damaged complete) store of the same source and
settings that it resumes, or, for ``--overwrite`` of a complete store, into a sibling
``<store>.rebuild`` that :mod:`~wsi_patchgd.store.switch` later puts in its place.
:func:`store_metadata` is the attributes every store carries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import zarr

from ..errors import StoreError
from ..io import StorageOptions, filesystem, is_remote, local_path, zarr_store
from ..readers import SlideReader
from .format import (
    ATTR_KEY,
    FILL_VALUE,
    FORMAT_VERSION,
    OLD_SUFFIX,
    PROGRESS_PREFIX,
    REBUILD_SUFFIX,
    compressors,
    ome_multiscales,
)
from .jpeg import JpegTileCodec
from .plan import ConvertOptions, LevelPlan
from .verify import store_keys, verify_store


def rebuild_url(dest: str) -> str:
    """Where ``--overwrite`` builds the new store before switching it in."""
    return dest.rstrip("/") + REBUILD_SUFFIX


def old_url(dest: str) -> str:
    """Where a local switch moves the old store aside."""
    return dest.rstrip("/") + OLD_SUFFIX


def store_state(url: str, storage_options: StorageOptions | None) -> dict[str, Any] | None:
    """Our attributes of an existing store at url, {} for a non-store, None if nothing there."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path + "/zarr.json"):
        return None if not fs.exists(path) else {}
    try:
        group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
    except Exception:
        return {}
    return dict(group.attrs.get(ATTR_KEY) or {})  # type: ignore[arg-type]


def same_source(state: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether a store's attributes record this source (same file name and size)."""
    src = state.get("source", {})
    return bool(src.get("name") == identity["name"] and src.get("size") == identity["size"])


def compatible(state: dict[str, Any], plans: list[LevelPlan], options: ConvertOptions) -> bool:
    """Whether a store's attributes have these settings and levels (so it can be resumed)."""
    return (
        state.get("patch_size") == options.patch_size
        and state.get("shard_size") == options.shard_size
        and state.get("codec") == options.codec
        and [lv.get("shape") for lv in state.get("levels", [])]
        == [[3, pl.height, pl.width] for pl in plans]
    )


def inspect_store(
    url: str, storage_options: StorageOptions | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """:func:`store_state`, with a store marked complete that lacks nodes (listed second)
    reported as incomplete. A complete store's leftovers of a killed run (progress markers,
    ``*.partial`` files) are deleted."""
    state = store_state(url, storage_options)
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


def create_store(
    url: str,
    storage_options: StorageOptions | None,
    reader: SlideReader,
    plans: list[LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> None:
    """Create an empty, incomplete store at ``url``: every level array, the OME multiscales
    and our attributes with ``complete: false``."""
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


def _create_level(group: zarr.Group, pl: LevelPlan, options: ConvertOptions) -> None:
    p, s = options.patch_size, options.shard_size
    codec: dict[str, Any] = (
        {"serializer": JpegTileCodec.for_level(pl.jpeg), "compressors": None}
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
    plans: list[LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
    complete: bool,
    tissue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Our attributes of a store (``ATTR_KEY``): source, reader, settings, levels, tissue."""
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
                "codec": pl.jpeg.describe()
                if pl.jpeg is not None
                else ("blosc-lz4" if options.codec == "jpeg" else options.codec),
            }
            for pl in plans
        ],
        "tissue": tissue or {"params": options.tissue.to_dict()},
        "complete": complete,
    }


def done_markers(
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


def _reopen(
    url: str,
    storage_options: StorageOptions | None,
    plans: list[LevelPlan],
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


class StoreComplete(Exception):
    """The store is already complete."""


def prepare_target(
    reader: SlideReader,
    dest: str,
    store_options: StorageOptions | None,
    plans: list[LevelPlan],
    options: ConvertOptions,
    identity: dict[str, Any],
) -> tuple[str, bool, list[str]]:
    """Where to write, whether that resumes a store there, and what a damaged complete store
    there lacked; raises StoreComplete for a complete store, StoreError on foreign contents."""
    state, damaged = inspect_store(dest, store_options)
    if state == {}:
        raise StoreError(
            f"{dest}: exists and is not a wsi_patchgd store; move it away or choose another --out"
        )
    target = dest
    if state is not None and state.get("complete") is True:
        if not options.overwrite:
            if not same_source(state, identity):
                raise StoreError(
                    f"{dest}: a complete store of another source "
                    f"({state.get('source', {}).get('name')}) is there; use --overwrite to "
                    "replace it"
                )
            raise StoreComplete()
        target = rebuild_url(dest)  # the complete store stays until the switch
        state, damaged = inspect_store(target, store_options)
    elif (
        state is not None
        and not options.overwrite
        and not (same_source(state, identity) and compatible(state, plans, options))
    ):
        what = (
            f"a damaged store (without {', '.join(damaged)})" if damaged else "an incomplete store"
        )
        raise StoreError(
            f"{dest}: {what} from another source or other settings is there; "
            "use --overwrite to rebuild it"
        )
    resumed = bool(state and same_source(state, identity) and compatible(state, plans, options))
    if resumed:
        _reopen(target, store_options, plans, options, damaged)
    else:
        remove_store(target, store_options)
        create_store(target, store_options, reader, plans, options, identity)
    return target, resumed, damaged


def find_keys(fs: Any, path: str) -> list[str]:
    """Every object under ``path`` (fresh, not from fsspec's listing cache)."""
    fs.invalidate_cache(path)
    try:
        return list(fs.find(path))
    except FileNotFoundError:
        return []


def remove_prefix(url: str, storage_options: StorageOptions | None, rel: str) -> None:
    """Delete everything under ``url/rel``."""
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        keys = find_keys(fs, f"{path}/{rel}")
        if keys:
            fs.rm(keys)
    else:
        shutil.rmtree(local_path(url) / rel, ignore_errors=True)


def remove_store(
    url: str,
    storage_options: StorageOptions | None,
    between: Callable[[], None] | None = None,
) -> None:
    """Delete a store, its root ``zarr.json`` first, so that a half-deleted store is never taken
    for one (``between``: called in between, the overwrite switch's fault-hook step)."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.invalidate_cache(path)
        if fs.exists(path + "/zarr.json"):
            fs.rm(path + "/zarr.json")
        if between:
            between()
        keys = find_keys(fs, path)
        if keys:
            fs.rm(keys)
        return
    p = local_path(url)
    try:
        os.unlink(p / "zarr.json")
    except (FileNotFoundError, NotADirectoryError):
        pass
    if between:
        between()
    shutil.rmtree(p, ignore_errors=True)


def _delete_keys(url: str, storage_options: StorageOptions | None, rel: list[str]) -> None:
    """Delete these keys (relative to the store), those already gone included."""
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


def _put_marker(url: str, storage_options: StorageOptions | None, rel: str) -> None:
    fs, root = filesystem(url, storage_options)
    path = f"{root}/{rel}"
    if not is_remote(url):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, b"")
