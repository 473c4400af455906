"""The store-backed :class:`~wsi_patchgd.engine.source.PatchSource` the trainer reads through.

Reads are batched per inner iteration (one call reads the k patches of an image through the
chunk reader: locally one ``pread`` and one decode per patch, thread-parallel; remotely the
chunks of a shard in about one request, all shards at once, see
:mod:`wsi_patchgd.store.shard_stream`), and the next requests are prefetched in background
threads while the current step computes: the engine announces the reads of a whole batch with
:meth:`StorePatchSource.prefetch` and then asks for them one by one; at most ``lookahead``
requests are in flight, so memory stays bounded. Remote stores can keep their shards in a local
on-disk cache (``cache_dir``), so that epoch 2 onward reads at local speed;
:meth:`StorePatchSource.take_io_stats` tells what the reads cost.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..io import StorageOptions, is_remote
from ..sampling import PatchGrid
from ..store.cache import ShardCache, parse_size, shard_cache
from ..store.iostats import IOStats
from ..store.remote import StreamOptions
from ..store.slide_store import SlideStore
from ..store.tissue_tables import level_fractions

#: ``cache_size`` when a cache directory is given without one
DEFAULT_CACHE_SIZE = "20GB"
#: prefetch threads for remote stores (requests of several reads overlap); local stores use 1
REMOTE_READ_WORKERS = 8


class StorePatchSource:
    """Patches of one pyramid level of many slide stores.

    Args:
        stores: store URLs (image id = position in this list).
        level: pyramid level to train on, or one level per store.
        patch_size: patch side (default: the store's chunk size, the fast path).
        tissue_threshold: a patch is tissue when its stored tissue fraction is >= this.
        storage_options: fsspec options for remote stores.
        lookahead: prefetched requests kept in flight.
        record_reads: keep (image, shape) of every read in ``self.reads`` (tests, audits).
        cache_dir: a local directory that keeps the shards of remote stores (may be shared by
            processes); None: no cache.
        cache_size: the cache's size limit (``"20GB"``, ``"512MiB"`` or bytes).
        stream: how remote stores are read (backend, requests in flight, retries).
        read_workers: prefetch threads (default 1 for local stores, 8 for remote ones).

    Raises:
        ConfigError: ``cache_size`` is not a size, or ``cache_dir`` cannot be created.
    """

    def __init__(
        self,
        stores: Sequence[str],
        level: int | Sequence[int] = 0,
        patch_size: int | None = None,
        tissue_threshold: float = 0.1,
        storage_options: StorageOptions | None = None,
        lookahead: int = 8,
        record_reads: bool = False,
        *,
        cache_dir: str | None = None,
        cache_size: str | int | None = None,
        stream: StreamOptions | None = None,
        read_workers: int | None = None,
    ) -> None:
        self.urls = list(stores)
        self.levels = [int(level)] * len(self.urls) if isinstance(level, int) else list(level)
        if len(self.levels) != len(self.urls):
            raise ValueError(f"{len(self.levels)} levels for {len(self.urls)} stores")
        self._patch_size = patch_size
        self.tissue_threshold = tissue_threshold
        self.storage_options = storage_options
        self._stores: dict[int, SlideStore] = {}
        self._grids: dict[int, PatchGrid] = {}
        self._lock = threading.Lock()
        self.cache_dir = cache_dir
        self.cache_size = parse_size(cache_size or DEFAULT_CACHE_SIZE)
        self.stream = stream
        self.io_stats = IOStats()
        self._cache: ShardCache | None = None
        if cache_dir is not None:
            self._cache = shard_cache(cache_dir, self.cache_size)
        remote = any(is_remote(u) for u in self.urls)
        self.read_workers = read_workers or (REMOTE_READ_WORKERS if remote else 1)
        self._pool = self._new_pool()
        self._pending: OrderedDict[tuple[int, bytes], Future[np.ndarray]] = OrderedDict()
        self._queue: list[tuple[int, np.ndarray]] = []
        self.lookahead = lookahead
        self.reads: list[tuple[int, tuple[int, ...]]] | None = [] if record_reads else None

    def __len__(self) -> int:
        return len(self.urls)

    def store(self, image: int) -> SlideStore:
        with self._lock:
            if image not in self._stores:
                self._stores[image] = SlideStore(
                    self.urls[image],
                    self.storage_options,
                    stream=self.stream,
                    cache=self._cache,
                    stats=self.io_stats,
                )
            return self._stores[image]

    def take_io_stats(self) -> dict[str, int | float]:
        """What the reads cost since the last call, then the counters start again from zero.

        Returns:
            ``patches_read``, ``cache_hits`` / ``cache_misses`` (remote patches served from /
            not found in the shard cache), ``requests`` and ``bytes_fetched`` (to the object
            store, retries included), ``retries``, ``cache_bytes_written``,
            ``cache_evictions``, and ``fetch_wait_s`` (seconds readers waited for the store).
        """
        return self.io_stats.take()

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.read_workers, thread_name_prefix="prefetch")

    @property
    def patch_size(self) -> int:
        return self._patch_size or self.store(0).patch_size

    def grid(self, image: int) -> PatchGrid:
        """Tissue grid of an image at the training level (from the stored patch table)."""
        if image not in self._grids:
            s = self.store(image)
            p = self.patch_size
            if p == s.patch_size:
                fractions = s.patch_fractions(self.levels[image])
            else:
                level = self.levels[image]
                fractions = level_fractions(
                    s.tissue_mask(), s.mask_downsample, s.downsample(level), p, s.level_shape(level)
                )
            self._grids[image] = PatchGrid.from_fractions(fractions, self.tissue_threshold, p)
        return self._grids[image]

    def grid_shape(self, image: int) -> tuple[int, int]:
        return self.store(image).grid_shape(self.levels[image], self.patch_size)

    def _read_now(self, image: int, indices: np.ndarray) -> np.ndarray:
        grid = self.grid(image)
        rows, cols = grid.coords(np.asarray(indices, np.int64))
        out = self.store(image).read_patches(self.levels[image], rows, cols, self.patch_size)
        if self.reads is not None:
            self.reads.append((image, tuple(out.shape)))
        return out

    # -- prefetching -----------------------------------------------------------------------
    def prefetch(self, requests: Sequence[tuple[int, np.ndarray]]) -> None:
        """Announce reads that will follow, in order; they are read ahead in the background."""
        with self._lock:
            self._queue.extend((int(i), np.asarray(idx, np.int64)) for i, idx in requests)
        self._top_up()

    def _top_up(self) -> None:
        with self._lock:
            while self._queue and len(self._pending) < self.lookahead:
                image, idx = self._queue.pop(0)
                key = (image, idx.tobytes())
                if key not in self._pending:
                    self._pending[key] = self._pool.submit(self._read_now, image, idx)

    def read(self, image: int, indices: np.ndarray) -> torch.Tensor:
        """uint8 patches (m, 3, P, P) in the order of ``indices`` (prefetched when announced)."""
        idx = np.asarray(indices, np.int64)
        key = (int(image), idx.tobytes())
        with self._lock:
            fut = self._pending.pop(key, None)
        data = fut.result() if fut is not None else self._read_now(int(image), idx)
        self._top_up()
        return torch.from_numpy(data)

    def cancel_prefetch(self) -> None:
        """Drop announced reads not yet asked for (end of a batch)."""
        with self._lock:
            self._queue.clear()
            pending = list(self._pending.values())
            self._pending.clear()
        for f in pending:
            f.cancel()

    def storage_order(self, image: int, indices: np.ndarray) -> np.ndarray:
        """Indices sorted shard by shard (then row-major inside a shard): the order to fill Z."""
        s = self.store(image)
        grid = self.grid(image)
        rows, cols = grid.coords(np.asarray(indices, np.int64))
        per = max(1, s.meta.shard_size // self.patch_size)
        key = np.lexsort((cols, rows, cols // per, rows // per))
        return np.asarray(indices, np.int64)[key]

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers / DDP
        d = self.__dict__.copy()
        d["_pool"] = None
        d["_lock"] = None
        d["_pending"] = OrderedDict()
        d["_stores"] = {}
        d["_cache"] = None
        d["io_stats"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()
        self.io_stats = IOStats()
        if self.cache_dir is not None:
            self._cache = shard_cache(self.cache_dir, self.cache_size)
        self._pool = self._new_pool()
