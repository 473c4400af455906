"""What a store lacks to be complete: one listing of its objects, checked against its attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zarr

from ..io import StorageOptions, filesystem, is_remote, zarr_store
from .format import required_nodes
from .meta import StoreMeta


def store_keys(url: str, storage_options: StorageOptions | None = None) -> set[str]:
    """Every object (file) of the store at url, as paths relative to it (one listing)."""
    fs, root = filesystem(url, storage_options)
    if is_remote(url):
        fs.invalidate_cache(root)
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return set()
    return {k[len(root) + 1 :] for k in found if k.startswith(root + "/")}


def verify_store(
    url: str,
    storage_options: StorageOptions | None,
    meta: StoreMeta | Mapping[str, Any],
    *,
    keys: set[str] | None = None,
    deep: bool = False,
) -> list[str]:
    """What a store lacks to be complete for its attributes ``meta``; [] when nothing.

    ``meta`` is the parsed :class:`~wsi_patchgd.store.meta.StoreMeta` or the raw attribute
    object (which may be malformed: then that is the problem reported).

    Every node of :func:`~wsi_patchgd.store.format.required_nodes` must have its metadata
    object (one listing); ``deep`` also opens each one and compares array shapes. Missing shard
    objects cannot be told from all-white shards, which are not stored, so they are not checked.
    """
    keys = store_keys(url, storage_options) if keys is None else keys
    raw = meta.to_dict() if isinstance(meta, StoreMeta) else meta
    try:
        nodes = required_nodes(raw)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"attributes lack {exc}"]
    problems = [f"{n} missing" for n in nodes if f"{n}/zarr.json" not in keys]
    if "zarr.json" not in keys:
        problems.insert(0, "zarr.json missing")
    if problems or not deep:
        return problems
    group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
    for name, shape in nodes.items():
        try:
            node: Any = group[name]
        except Exception as exc:  # torn or unreadable metadata
            problems.append(f"{name} unreadable ({type(exc).__name__})")
            continue
        is_array = isinstance(node, zarr.Array)
        if name == "tissue/mask":
            if not (is_array and node.ndim == 2):
                problems.append("tissue/mask is not a 2-d array")
        elif shape is None:
            if is_array:
                problems.append(f"{name} is an array, not a group")
        elif not is_array:
            problems.append(f"{name} is a group, not an array")
        elif tuple(node.shape) != shape:
            problems.append(f"{name} has shape {tuple(node.shape)}, attributes say {shape}")
    return problems
