"""Reading chunks of a remote sharded array: shard cache, whole shards, coalesced ranges.

One call of :meth:`RemoteChunks.read` reads a batch of chunks (the k patches of an inner
iteration, or a slice of a Z fill in storage order) with as few round trips as it can:

* with a :class:`~wsi_patchgd.store.cache.ShardCache`: a shard already on local disk is read
  there (``os.pread``, as a local store); each other shard is fetched whole, in one request,
  written to the cache, and served from memory meanwhile (so the first epoch fetches each
  shard once and later epochs run at local speed);
* without one: a shard whose index is known gets the ranges of its wanted chunks, coalesced
  into about one request; one whose index is not known gets its index first (one suffix
  request), or is fetched whole when most of its chunks are wanted (a Z fill).

All shards of a batch are fetched concurrently (one event loop, up to ``max_in_flight``
requests in flight, see :mod:`~wsi_patchgd.store.remote`), and each chunk is decoded in the
read pool as soon as its bytes arrive. Two threads wanting the same shard share one fetch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import StorageOptions
from .cache import CachedFile, ShardCache
from .iostats import IOStats
from .remote import ObjectFetcher, StreamOptions, run

if TYPE_CHECKING:
    from .chunk_reader import ChunkReader

_EMPTY = 2**64 - 1


async def gather_all(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Await coroutines concurrently; on the first error cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class RemoteChunks:
    """The remote read path of one :class:`~wsi_patchgd.store.chunk_reader.ChunkReader`.

    Args:
        array: the reader (layout, decode, in-memory shard indexes).
        array_url: the array's URL.
        storage_options: fsspec options of the URL.
        stream: backend, concurrency, coalescing, retries.
        cache: the shard cache (None: off).
        stats: counters.
        token: the store's content token (part of the cache keys).
        pool: the thread pool that decodes (and writes cache files).
    """

    def __init__(
        self,
        array: ChunkReader,
        array_url: str,
        storage_options: StorageOptions | None,
        stream: StreamOptions,
        cache: ShardCache | None,
        stats: IOStats | None,
        token: str,
        pool: Callable[[], ThreadPoolExecutor],
    ) -> None:
        self.array = array
        self.url = array_url.rstrip("/")
        self.stream = stream
        self.cache = cache
        self.stats = stats
        self._token = token
        self._pool = pool
        self._storage_options = storage_options
        self._fetcher: ObjectFetcher | None = None
        self._lock = threading.Lock()
        self._inflight: dict[tuple[int, ...], Future[Any]] = {}
        self._pid = os.getpid()

    @property
    def fetcher(self) -> ObjectFetcher:
        """The request sender (made on first use, and again in a forked child, whose copy
        of the parent's event loop runs no thread)."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._inflight = {}
            self._fetcher = None
            self._pid = os.getpid()
        with self._lock:
            if self._fetcher is None:
                self._fetcher = ObjectFetcher(self.url, self._storage_options, self.stream)
            return self._fetcher

    def _add(self, **counts: int) -> None:
        if self.stats is not None:
            self.stats.add(**counts)

    def cache_key(self, shard: tuple[int, ...]) -> str:
        """The cache key of a shard."""
        return ShardCache.key(f"{self.url}/{self.array.shard_key(shard)}", self._token)

    # -- the batch -----------------------------------------------------------------------------
    def read(self, chunks: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Chunks by chunk-grid coordinates, in the order given (see the module docstring)."""
        a = self.array
        by_shard: dict[tuple[int, ...], list[tuple[int, tuple[int, ...], tuple[int, ...]]]] = {}
        for i, c in enumerate(chunks):
            chunk = tuple(int(v) for v in c)
            shard, inner = a.split(chunk)
            by_shard.setdefault(shard, []).append((i, inner, chunk))
        slots: list[Any] = [None] * len(chunks)
        self._add(patches_read=len(chunks))
        to_fetch = []
        for shard, items in by_shard.items():
            if self.cache is not None and self._from_cache(shard, items, slots):
                self._add(cache_hits=len(items))
                continue
            to_fetch.append(shard)
        if to_fetch:
            if self.cache is not None:
                self._add(cache_misses=sum(len(by_shard[s]) for s in to_fetch))
            t0 = time.perf_counter()
            fetcher = self.fetcher
            try:
                run(
                    gather_all(self._fetch_shard(s, by_shard[s], slots) for s in to_fetch),
                    fetcher.loop,
                )
            finally:
                if self.stats is not None:
                    self.stats.add_fetch_time(time.perf_counter() - t0)
        return [s.result() if isinstance(s, Future) else s for s in slots]

    # -- from the shard cache ------------------------------------------------------------------
    def _from_cache(
        self,
        shard: tuple[int, ...],
        items: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
        slots: list[Any],
    ) -> bool:
        """Submit the chunks' reads from the cached shard file; False when it is not cached
        (or found damaged: it is discarded then)."""
        assert self.cache is not None
        a = self.array
        key = self.cache_key(shard)
        handle = self.cache.open(key)
        if handle is None:
            return False
        try:
            known, index = a.known_index(shard)
            nbytes = a.index_nbytes
            if not known or index is None:
                size = handle.size
                raw = os.pread(handle.fd, nbytes, size - nbytes) if size >= nbytes else b""
                index = a.parse_index(raw, str(self.cache.path(key)))
                a.remember_index(shard, index)
            entries = [(int(o), int(n)) for o, n in (index[inner] for _, inner, _ in items)]
            limit = handle.size - nbytes
            if any(o != _EMPTY and o + n > limit for o, n in entries):
                raise ValueError("index runs past the file")
        except Exception:  # noqa: BLE001 - a damaged cache file is fetched again
            handle.release()
            self.cache.discard(key)
            return False
        pool = self._pool()
        for (i, _, chunk), (o, n) in zip(items, entries, strict=True):
            if o == _EMPTY:
                slots[i] = a.empty_chunk()
            elif handle.acquire():
                slots[i] = pool.submit(self._pread_decode, handle, o, n, chunk)
        handle.release()
        return True

    def _pread_decode(
        self, handle: CachedFile, offset: int, length: int, chunk: tuple[int, ...]
    ) -> np.ndarray:
        try:
            data = os.pread(handle.fd, length, offset)
        finally:
            handle.release()
        if len(data) != length:
            raise OSError(f"{self.url}: cached shard file is shorter than its index says")
        return self.array.decode_chunk(data, chunk)

    # -- from the object store -----------------------------------------------------------------
    async def _fetch_shard(
        self,
        shard: tuple[int, ...],
        items: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
        slots: list[Any],
    ) -> None:
        a = self.array
        key = a.shard_key(shard)
        where = self.fetcher.url(key)
        known, index = a.known_index(shard)
        whole = self.cache is not None or (
            not known and len(items) >= self.stream.whole_shard_fraction * a.n_chunks
        )
        if whole and not (known and index is None):
            got = await self._whole(shard, key)
            if got is None:
                a.remember_index(shard, None)
                index = None
            else:
                data, index = got
                self._decode_from(data, index, items, slots)
                return
        elif not known:
            raw = await self.fetcher.get_suffix(key, a.index_nbytes, self.stats)
            index = None if raw is None else a.parse_index(raw, where)
            a.remember_index(shard, index)
        if index is None:
            for i, _, _ in items:
                slots[i] = a.empty_chunk()
            return
        wanted = []
        for i, inner, chunk in items:
            o, n = (int(v) for v in index[inner])
            if o == _EMPTY:
                slots[i] = a.empty_chunk()
            else:
                wanted.append((i, chunk, o, o + n))
        pool = self._pool()

        def on_part(members: list[int], parts: list[memoryview]) -> None:
            for m, part in zip(members, parts, strict=True):
                i, chunk = wanted[m][0], wanted[m][1]
                slots[i] = pool.submit(a.decode_chunk, part, chunk)

        if wanted:
            ranges = [(s, e) for _, _, s, e in wanted]
            await self.fetcher.get_ranges(key, ranges, self.stats, on_part)

    def _decode_from(
        self,
        data: bytes | memoryview,
        index: np.ndarray,
        items: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
        slots: list[Any],
    ) -> None:
        a = self.array
        view = memoryview(data)
        pool = self._pool()
        for i, inner, chunk in items:
            o, n = (int(v) for v in index[inner])
            if o == _EMPTY:
                slots[i] = a.empty_chunk()
            else:
                slots[i] = pool.submit(a.decode_chunk, view[o : o + n], chunk)

    async def _whole(
        self, shard: tuple[int, ...], key: str
    ) -> tuple[bytes | memoryview, np.ndarray] | None:
        """The whole shard object and its index (None: not stored), fetched once however many
        threads ask; its index is checked, then it is written to the cache when there is one.

        Raises:
            StoreError: the index's checksum does not match (nothing is cached then).
        """
        with self._lock:
            fut = self._inflight.get(shard)
            owner = fut is None
            if fut is None:
                fut = self._inflight[shard] = concurrent.futures.Future()
        if not owner:
            return await asyncio.wrap_future(fut)
        a = self.array
        try:
            try:
                data = await self.fetcher.get(key, self.stats)
                got = None
                if data is not None:
                    index = a.parse_index(
                        memoryview(data)[-a.index_nbytes :], self.fetcher.url(key)
                    )
                    a.remember_index(shard, index)
                    got = (data, index)
            except BaseException as exc:
                fut.set_exception(exc)
                raise
            fut.set_result(got)
            if got is not None and self.cache is not None:
                loop = asyncio.get_running_loop()
                evicted = await loop.run_in_executor(
                    self._pool(), self.cache.put, self.cache_key(shard), got[0]
                )
                self._add(cache_bytes_written=len(got[0]), cache_evictions=evicted)
            return got
        finally:
            with self._lock:
                self._inflight.pop(shard, None)
