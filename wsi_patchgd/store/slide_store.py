"""Reading a slide store: levels, regions, batched patch reads, tissue mask and patch table.

Pixel layouts: :meth:`SlideStore.read_region` is (height, width, 3) like
:meth:`wsi_patchgd.readers.SlideReader.read_region`; the methods named ``*_chw``, the patch
reads and :meth:`SlideStore.to_dask` are (3, height, width), the store's own layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ..errors import StoreError, StoreIncompleteError
from ..io import StorageOptions, zarr_store
from .cache import ShardCache
from .chunk_reader import ChunkReader, supports
from .format import ATTR_KEY, FILL_VALUE, FORMAT_VERSION, OLD_SUFFIX, REBUILD_SUFFIX
from .iostats import IOStats
from .meta import StoreMeta
from .remote import StreamOptions
from .verify import verify_store

if TYPE_CHECKING:
    import dask.array

#: :meth:`SlideStore.level_for_mpp` takes a level whose pixels are up to this much (relative)
#: coarser than asked for (level sizes are rounded, so downsamples are rarely exact)
MPP_TOLERANCE = 0.01


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
        stream: how patches of a remote store are read (backend, requests in flight, retries;
            see :class:`~wsi_patchgd.store.remote.StreamOptions`).
        cache: an on-disk cache of a remote store's shards (see
            :func:`~wsi_patchgd.store.cache.shard_cache`); None: no cache.
        stats: counters of what patch reads cost (cache hits, requests, bytes).

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
        stream: StreamOptions | None = None,
        cache: ShardCache | None = None,
        stats: IOStats | None = None,
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
        raw = attrs.get(ATTR_KEY)
        if not isinstance(raw, dict):
            raise StoreError(
                f"{self.url}: a Zarr group but not a wsi_patchgd store (no '{ATTR_KEY}' "
                "attributes); create it with `wsi-patchgd convert`"
            )
        version = raw.get("format_version", 0)
        if isinstance(version, (int, float)) and version > FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: store format {version} is newer than this wsi_patchgd "
                f"understands ({FORMAT_VERSION}); upgrade wsi_patchgd"
            )
        if require_complete and raw.get("complete") is not True:
            raise StoreIncompleteError(
                f"{self.url}: store is incomplete (its conversion did not finish); rerun "
                "`wsi-patchgd convert` on its source to resume it"
            )
        #: the raw ``wsi_patchgd`` attribute object, as stored
        self.attrs: dict[str, Any] = dict(raw)
        #: the same, typed and checked
        self.meta: StoreMeta = StoreMeta.from_dict(raw, self.url)
        self.ome: dict[str, Any] = dict(attrs.get("ome") or {})  # type: ignore[arg-type]
        self._arrays: dict[int, Any] = {}
        self._storage_options = storage_options
        self._chunk_readers: dict[int, ChunkReader | None] = {}
        self._cr_lock = threading.Lock()
        self._stream = stream
        self._cache = cache
        self.stats = stats

    def verify(self, deep: bool = True) -> list[str]:
        """What this store lacks to be complete (see :func:`verify_store`); [] when nothing."""
        return verify_store(self.location, self._storage_options, self.meta, deep=deep)

    # -- metadata --------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.meta.complete

    @property
    def patch_size(self) -> int:
        return self.meta.patch_size

    @property
    def mpp(self) -> float | None:
        """Micrometres per pixel of level 0; None where the source did not record it."""
        return self.meta.mpp or None

    @property
    def n_levels(self) -> int:
        return len(self.meta.levels)

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of a level."""
        lv = self.meta.levels[level]
        return lv.height, lv.width

    def downsample(self, level: int) -> float:
        return self.meta.levels[level].downsample

    def level_mpp(self, level: int) -> float | None:
        """Micrometres per pixel of a level (level 0's times its downsample); None: unknown."""
        return None if self.mpp is None else self.mpp * self.downsample(level)

    def level_for_mpp(self, mpp: float) -> int:
        """The level to read for a pixel size of ``mpp`` micrometres.

        The rule: the coarsest level whose pixels are no coarser than ``mpp`` (allowing
        :data:`MPP_TOLERANCE`, 1 %, for rounded level sizes), so that the data is never less
        detailed than asked for; level 0 when ``mpp`` is finer than level 0.

        Raises:
            StoreError: the store records no mpp (its source did not say).
            ValueError: ``mpp`` is not a positive number.
        """
        try:
            want = float(mpp)
        except (TypeError, ValueError):
            want = math.nan
        if not (math.isfinite(want) and want > 0):
            raise ValueError(f"mpp must be a positive number of micrometres, got {mpp!r}")
        base = self.mpp
        if base is None:
            raise StoreError(
                f"{self.url}: store has no mpp (its source {self.meta.source.name!r} records "
                "no pixel size); choose a level by index instead"
            )
        best = 0
        for i, lv in enumerate(self.meta.levels):
            if base * lv.downsample <= want * (1 + MPP_TOLERANCE):
                best = i
        return best

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

    def to_dask(self, level: int = 0, chunks: Any = None) -> dask.array.Array:
        """A level as a lazy dask array, (3, H, W) uint8.

        Args:
            level: level index.
            chunks: dask chunks; default: the store's chunks, (3, P, P) with P the patch size
                (``(3, S, S)`` with S = ``meta.shard_size`` reads one object per chunk).

        Raises:
            StoreError: the level does not exist.
        """
        import dask.array as da
        from dask.base import tokenize

        arr = self.array(level)
        chunks = chunks if chunks is not None else arr.chunks
        # the name says which pixels these are: same store, level, layout and attributes
        token = tokenize(self.location, level, chunks, self.attrs)
        return da.from_array(
            arr, chunks=chunks, name=f"wsi-patchgd-{level}-{token}", asarray=True, fancy=False
        )

    # -- pixels ----------------------------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A region of a level as (height, width, 3) RGB uint8, like a slide reader's.

        Args:
            level: level index.
            x, y: top-left corner in the level's pixels (may be outside the image).
            width, height: region size.

        Returns:
            (height, width, 3) uint8, C-contiguous; outside the image is white.
        """
        chw = self.read_region_chw(level, x, y, width, height)
        return np.ascontiguousarray(chw.transpose(1, 2, 0))

    def read_region_chw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A region of a level as (3, height, width) uint8; outside the image is white."""
        return self.read_regions_chw(level, [(x, y)], width, height)[0]

    def read_regions_chw(
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
        read by :class:`~wsi_patchgd.store.chunk_reader.ChunkReader` (locally one ``pread`` and
        one decode per patch, thread-parallel; remotely the chunks of a shard in about one
        request, all shards at once, or from the shard cache); otherwise through zarr.

        Raises:
            StorageAccessError: remote storage refused a request, or kept failing.
        """
        p = patch_size or self.patch_size
        reader = self.chunk_reader(level) if p == self.patch_size else None
        if reader is not None:
            chunks = [(0, int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
            out = np.empty((len(chunks), 3, p, p), np.uint8)
            for i, a in enumerate(reader.read_chunks(chunks)):
                out[i] = a
            return out
        return self.read_regions_chw(
            level, [(int(c) * p, int(r) * p) for r, c in zip(rows, cols, strict=True)], p, p
        )

    def chunk_reader(self, level: int) -> ChunkReader | None:
        """The fast chunk reader of a level, or None if its layout is not one it handles."""
        with self._cr_lock:
            if level not in self._chunk_readers:
                meta = self.array(level).metadata.to_dict()
                self._chunk_readers[level] = (
                    ChunkReader(
                        f"{self.location.rstrip('/')}/{level}",
                        meta,
                        self._storage_options,
                        stream=self._stream,
                        cache=self._cache,
                        stats=self.stats,
                        token=self.content_token(),
                    )
                    if supports(meta)
                    else None
                )
            return self._chunk_readers[level]

    def content_token(self) -> str:
        """A hash of where the store is and what its attributes say (its settings, source
        identity and levels): two stores with the same token hold the same pixels."""
        doc = json.dumps([self.location, self.attrs], sort_keys=True, default=str)
        return hashlib.sha256(doc.encode()).hexdigest()[:24]

    # -- tissue ----------------------------------------------------------------------------
    def tissue_mask(self) -> np.ndarray:
        """The stored tissue mask (bool, at :attr:`mask_downsample`)."""
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
        """Downsample of the tissue mask (level-0 pixels per mask pixel)."""
        return float(self._tissue_value("mask_downsample"))

    def patch_fractions(self, level: int = 0) -> np.ndarray:
        """Tissue fraction of every patch of a level's grid, float32 (n_h, n_w)."""
        key = f"tissue/fraction/{level}"
        if not 0 <= level < self.n_levels:
            raise StoreError(f"{self.url}: no patch table for level {level} ({key})")
        return np.asarray(self._node(key)[:], dtype=np.float32)

    @property
    def tissue_fraction(self) -> float:
        """Tissue fraction of the whole slide."""
        return float(self._tissue_value("fraction"))

    def _tissue_value(self, key: str) -> float:
        v = getattr(self.meta.tissue, key)
        if v is None:
            raise StoreError(
                f"{self.url}: store attributes lack 'tissue.{key}' (its conversion did not "
                "finish); rerun `wsi-patchgd convert` on its source to finish it"
            )
        return float(v)
