"""Reading a slide store: levels, regions, batched patch reads, tissue mask and patch table."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ..errors import StoreError, StoreIncompleteError
from ..io import StorageOptions, filesystem, is_remote, zarr_store
from .format import (
    ATTR_KEY,
    FILL_VALUE,
    FORMAT_VERSION,
    OLD_SUFFIX,
    REBUILD_SUFFIX,
    required_nodes,
)


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
    meta: dict[str, Any],
    *,
    keys: set[str] | None = None,
    deep: bool = False,
) -> list[str]:
    """What a store lacks to be complete for its attributes ``meta``; [] when nothing.

    Every node of :func:`~wsi_patchgd.store.format.required_nodes` must have its metadata
    object (one listing); ``deep`` also opens each one and compares array shapes. Missing shard
    objects cannot be told from all-white shards, which are not stored, so they are not checked.
    """
    keys = store_keys(url, storage_options) if keys is None else keys
    try:
        nodes = required_nodes(meta)
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


def _open(url: str, storage_options: StorageOptions | None) -> tuple[Any, dict[str, Any]]:
    store = zarr_store(url, storage_options, read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
        raise StoreError(
            f"{url}: no Zarr store there; create it with `wsi-patchgd convert`"
        ) from exc
    return group, dict(group.attrs)


def _complete_sibling(
    url: str, storage_options: StorageOptions | None
) -> tuple[str, Any, dict[str, Any]] | None:
    """The complete store an interrupted ``--overwrite`` left beside url (new first, then old)."""
    for suffix in (REBUILD_SUFFIX, OLD_SUFFIX):
        alt = url.rstrip("/") + suffix
        try:
            group, attrs = _open(alt, storage_options)
        except StoreError:
            continue
        meta = attrs.get(ATTR_KEY)
        if isinstance(meta, dict) and meta.get("complete") is True:
            return alt, group, attrs
    return None


class SlideStore:
    """A converted slide: a Zarr v3 group written by :func:`wsi_patchgd.store.convert_slide`.

    Args:
        url: local path or URL of the store (``s3://bucket/slide.zarr`` ...).
        storage_options: fsspec options for remote URLs.
        require_complete: refuse stores not marked complete (the default).

    While ``convert --overwrite`` switches a new store in, the store at ``url`` can be absent
    or marked incomplete for a moment (or until a killed job is rerun); the complete store
    beside it (``url.rebuild``, else ``url.old``) is read then, so that one of the old and the
    new store is always readable. ``location`` is where the data is read from.

    Raises:
        StoreError: nothing there, or not a wsi_patchgd store, or a newer format.
        StoreIncompleteError: the conversion that wrote it did not finish.
    """

    def __init__(
        self,
        url: str,
        storage_options: StorageOptions | None = None,
        *,
        require_complete: bool = True,
    ) -> None:
        self.url = str(url)
        self.location = self.url
        try:
            group, attrs = _open(self.url, storage_options)
        except StoreError:
            alt = _complete_sibling(self.url, storage_options)
            if alt is None:
                raise
            self.location, group, attrs = alt
        else:
            meta = attrs.get(ATTR_KEY)
            if not (isinstance(meta, dict) and meta.get("complete") is True):
                alt = _complete_sibling(self.url, storage_options)
                if alt is not None:
                    self.location, group, attrs = alt
        self.group = group
        if ATTR_KEY not in attrs:
            raise StoreError(
                f"{self.url}: a Zarr group but not a wsi_patchgd store (no '{ATTR_KEY}' "
                "attributes); create it with `wsi-patchgd convert`"
            )
        self.meta: dict[str, Any] = dict(attrs[ATTR_KEY])  # type: ignore[arg-type]
        if int(self.meta.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: store format {self.meta.get('format_version')} is newer than this "
                f"wsi_patchgd understands ({FORMAT_VERSION}); upgrade wsi_patchgd"
            )
        if require_complete and self.meta.get("complete") is not True:
            raise StoreIncompleteError(
                f"{self.url}: store is incomplete (its conversion did not finish); rerun "
                "`wsi-patchgd convert` on its source to resume it"
            )
        self.ome: dict[str, Any] = dict(attrs.get("ome") or {})  # type: ignore[arg-type]
        self._arrays: dict[int, Any] = {}
        self._storage_options = storage_options
        self._chunk_readers: dict[int, Any] = {}
        self._cr_lock = threading.Lock()

    def verify(self, deep: bool = True) -> list[str]:
        """What this store lacks to be complete (see :func:`verify_store`); [] when nothing."""
        return verify_store(self.location, self._storage_options, self.meta, deep=deep)

    # -- metadata --------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.meta.get("complete") is True

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    @property
    def mpp(self) -> float | None:
        v = self.meta.get("mpp")
        return float(v) if v else None

    @property
    def n_levels(self) -> int:
        return len(self.meta.get("levels", []))

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of a level."""
        h, w = self.meta["levels"][level]["shape"][1:]
        return int(h), int(w)

    def downsample(self, level: int) -> float:
        return float(self.meta["levels"][level]["downsample"])

    def grid_shape(self, level: int, patch_size: int | None = None) -> tuple[int, int]:
        """(n_h, n_w) of the non-overlapping patch grid of a level (last row/col padded)."""
        p = patch_size or self.patch_size
        h, w = self.level_shape(level)
        return (h + p - 1) // p, (w + p - 1) // p

    def array(self, level: int) -> zarr.Array:
        """The Zarr array of a level, (3, H, W) uint8."""
        if level not in self._arrays:
            if not 0 <= level < max(self.n_levels, 1):
                raise StoreError(
                    f"{self.url}: level {level} does not exist (levels 0..{self.n_levels - 1})"
                )
            self._arrays[level] = self._node(str(level))
        return self._arrays[level]

    # -- pixels ----------------------------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(3, height, width) uint8 of a level; outside the image is white."""
        return self.read_regions(level, [(x, y)], width, height)[0]

    def read_regions(
        self, level: int, origins: Sequence[tuple[int, int]], width: int, height: int
    ) -> np.ndarray:
        """Many same-size regions of one level, read concurrently.

        Args:
            level: level index.
            origins: (x, y) top-left corners in the level's pixels.
            width, height: region size.

        Returns:
            (len(origins), 3, height, width) uint8; outside the image is white.
        """
        arr = self.array(level)
        H, W = arr.shape[1:]
        out = np.full((len(origins), 3, height, width), FILL_VALUE, np.uint8)
        jobs: list[tuple[int, tuple[slice, slice, slice], tuple[slice, slice]]] = []
        for i, (x, y) in enumerate(origins):
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + width, W), min(y + height, H)
            if x1 <= x0 or y1 <= y0:
                continue
            jobs.append(
                (
                    i,
                    (slice(None), slice(y0, y1), slice(x0, x1)),
                    (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)),
                )
            )
        if not jobs:
            return out
        aarr = arr._async_array

        async def _all() -> list[Any]:
            return await asyncio.gather(*(aarr.getitem(sel) for _, sel, _ in jobs))

        results = sync(_all())
        for (i, _, dst), data in zip(jobs, results, strict=True):
            out[i, :, dst[0], dst[1]] = np.asarray(data)
        return out

    def read_patches(
        self,
        level: int,
        rows: Sequence[int] | np.ndarray,
        cols: Sequence[int] | np.ndarray,
        patch_size: int | None = None,
    ) -> np.ndarray:
        """Patches of the level's grid by (row, col): (m, 3, P, P) uint8, read concurrently.

        When the patch size is the store's chunk size (the usual case) each patch is one chunk,
        read by :class:`~wsi_patchgd.store.chunk_reader.ChunkReader` (one byte-range read and
        one decode per patch, thread-parallel); otherwise through zarr.
        """
        p = patch_size or self.patch_size
        reader = self.chunk_reader(level) if p == self.patch_size else None
        if reader is not None:
            chunks = [(0, int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
            out = np.empty((len(chunks), 3, p, p), np.uint8)
            for i, a in enumerate(reader.read_chunks(chunks)):
                out[i] = a
            return out
        return self.read_regions(
            level, [(int(c) * p, int(r) * p) for r, c in zip(rows, cols, strict=True)], p, p
        )

    def chunk_reader(self, level: int) -> Any:
        """The fast chunk reader of a level, or None if its layout is not one it handles."""
        from .chunk_reader import ChunkReader, supports

        with self._cr_lock:
            if level not in self._chunk_readers:
                meta = self.array(level).metadata.to_dict()
                self._chunk_readers[level] = (
                    ChunkReader(f"{self.location.rstrip('/')}/{level}", meta, self._storage_options)
                    if supports(meta)
                    else None
                )
            return self._chunk_readers[level]

    # -- tissue ----------------------------------------------------------------------------
    def tissue_mask(self) -> np.ndarray:
        """The stored tissue mask (bool, at ``meta['tissue']['mask_downsample']``)."""
        return np.asarray(self._node("tissue/mask")[:]).astype(bool)

    def _node(self, key: str) -> Any:
        try:
            return self.group[key]
        except KeyError as exc:
            raise StoreError(
                f"{self.url}: store is damaged ({key} missing); rerun `wsi-patchgd convert` on "
                "its source to repair it"
            ) from exc

    @property
    def mask_downsample(self) -> float:
        return float(self.meta["tissue"]["mask_downsample"])

    def patch_fractions(self, level: int = 0) -> np.ndarray:
        """Tissue fraction of every patch of a level's grid, float32 (n_h, n_w)."""
        key = f"tissue/fraction/{level}"
        if not 0 <= level < self.n_levels:
            raise StoreError(f"{self.url}: no patch table for level {level} ({key})")
        return np.asarray(self._node(key)[:], dtype=np.float32)

    @property
    def tissue_fraction(self) -> float:
        return float(self.meta["tissue"]["fraction"])
