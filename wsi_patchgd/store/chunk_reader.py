"""Fast reads of whole chunks (= patches) from sharded Zarr v3 arrays.

A training patch of a store is exactly one chunk, so a patch read is: look up the chunk's
(offset, length) in its shard's index, read those bytes, decode. Locally that is ``os.pread``
from a thread pool; shard indexes are read once and cached (they are ~1 KB per shard), so after
warm-up one patch costs one read and one decode, with no asyncio round trip. Remote stores are
read by :class:`~wsi_patchgd.store.shard_stream.RemoteChunks` (many requests in flight, the
chunks of one shard coalesced, an optional on-disk shard cache). This module implements only
what the Zarr v3 sharding spec says for ``index_location: end`` with ``bytes`` + ``crc32c``
index codecs, which is what :mod:`wsi_patchgd.store.convert` writes; anything else falls back
to zarr's own reader.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import StoreError
from ..io import StorageOptions, filesystem, is_remote, local_path
from .cache import ShardCache
from .iostats import IOStats
from .jpeg import CODEC_NAME as JPEG_CODEC
from .jpeg import JpegTileCodec
from .remote import StreamOptions
from .shard_stream import RemoteChunks

#: the offset (and length) of a chunk that is not stored (all fill value)
EMPTY = 2**64 - 1
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def read_pool() -> ThreadPoolExecutor:
    """One read/decode pool for every store of the process (threads are not per store); a
    forked child (a DataLoader worker) gets its own, since it inherits no running thread."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            n = int(os.environ.get("WSI_PATCHGD_READ_THREADS", 0)) or min(
                16, 2 * (os.cpu_count() or 1)
            )
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="wsi-read")
            _POOL_PID = os.getpid()
        return _POOL


#: zarr's Blosc shuffle names -> numcodecs' numbers
BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def supports(meta: dict[str, Any]) -> bool:
    """True if the array metadata (zarr.json dict) is a layout this reader handles."""
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return False
    cfg = codecs[0]["configuration"]
    inner = [c["name"] for c in cfg["codecs"]]
    index = [c["name"] for c in cfg["index_codecs"]]
    return (
        cfg.get("index_location", "end") == "end"
        and index == ["bytes", "crc32c"]
        and (
            (inner[0] == "bytes" and all(n in ("blosc", "zstd") for n in inner[1:]))
            or inner == [JPEG_CODEC]
        )
        and len(inner) <= 2
        and meta.get("data_type") == "uint8"
        and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") == "/"
    )


class ShardedArray:
    """Layout, codec and location of one sharded uint8 array (shared by reader and writer).

    Args:
        array_url: URL of the array (``<store>/<level>``).
        meta: the array's zarr.json as a dict (must satisfy :func:`supports`).
        storage_options: fsspec options for remote URLs.
    """

    def __init__(
        self, array_url: str, meta: dict[str, Any], storage_options: StorageOptions | None = None
    ) -> None:
        import numcodecs

        if not supports(meta):
            raise ValueError(f"{array_url}: layout not handled by the shard reader/writer")
        cfg = meta["codecs"][0]["configuration"]
        self.shape = tuple(int(s) for s in meta["shape"])
        self.shard = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.chunk = tuple(int(s) for s in cfg["chunk_shape"])
        self.fill = int(meta.get("fill_value", 0))
        self.per_shard = tuple(s // c for s, c in zip(self.shard, self.chunk, strict=True))
        #: bytes of a shard's index at its end (16 per chunk, then a CRC32C)
        self.index_nbytes = int(np.prod(self.per_shard)) * 16 + 4
        self._codec: Any = None
        self.jpeg: JpegTileCodec | None = None
        inner = cfg["codecs"][1:]
        if cfg["codecs"][0]["name"] == JPEG_CODEC:
            self.jpeg = JpegTileCodec.from_dict(cfg["codecs"][0])
        elif inner:
            conf = dict(inner[0].get("configuration", {}))
            if inner[0]["name"] == "blosc":
                shuffle = BLOSC_SHUFFLE[conf.get("shuffle", "noshuffle")]
                self._codec = numcodecs.Blosc(
                    cname=conf.get("cname", "lz4"),
                    clevel=int(conf.get("clevel", 5)),
                    shuffle=shuffle,
                    blocksize=int(conf.get("blocksize", 0)),
                )
            else:
                self._codec = numcodecs.Zstd(level=int(conf.get("level", 0)))
        self.remote = is_remote(array_url)
        self._fs, self._root = filesystem(array_url, storage_options)
        if not self.remote:
            self._root = str(local_path(array_url))

    def _shard_path(self, shard: tuple[int, ...]) -> str:
        return self._root + "/c/" + "/".join(str(i) for i in shard)

    def shard_key(self, shard: tuple[int, ...]) -> str:
        """The key of a shard object under the array (``c/0/1/2``)."""
        return "c/" + "/".join(str(i) for i in shard)

    def decode(self, data: bytes | memoryview) -> np.ndarray:
        """One stored chunk's bytes -> array of shape ``self.chunk``."""
        if self.jpeg is not None:
            return self.jpeg.decode_chunk(data, self.chunk)  # type: ignore[arg-type]
        if self._codec is not None:
            data = self._codec.decode(data)
        return np.frombuffer(data, np.uint8).reshape(self.chunk)

    def decode_chunk(self, data: bytes | memoryview, chunk: tuple[int, ...]) -> np.ndarray:
        """A chunk's bytes -> its array, with fill value past the image edge (JPEG tiles)."""
        out = self.decode(data)
        if self.jpeg is not None:  # a source tile runs past the image edge: fill value there
            ext = [min(c, n - i * c) for i, c, n in zip(chunk, self.chunk, self.shape, strict=True)]
            if ext != list(self.chunk):
                out[:, ext[1] :, :] = self.fill
                out[:, :, ext[2] :] = self.fill
        return out

    def empty_chunk(self) -> np.ndarray:
        """A chunk of fill value (a chunk or shard that is not stored)."""
        return np.full(self.chunk, self.fill, np.uint8)

    def parse_index(self, raw: bytes | memoryview, where: str) -> np.ndarray:
        """A shard's index bytes -> (offset, length) per chunk, shape ``per_shard + (2,)``.

        Raises:
            StoreError: the checksum does not match (a corrupt shard).
        """
        _check_crc(raw, where)
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard + (2,))


class ChunkReader(ShardedArray):
    """Reads whole inner chunks of one sharded uint8 array, many at once.

    Args:
        array_url: URL of the array (``<store>/<level>``).
        meta: the array's zarr.json as a dict (must satisfy :func:`supports`).
        storage_options: fsspec options for remote URLs.
        cache_shards: shard indexes kept in memory.
        stream: how a remote array is read (backend, requests in flight, retries).
        cache: the on-disk shard cache for a remote array (None: no cache).
        stats: counters of what the reads cost.
        token: what identifies the store's content (a hash of its attributes): part of the
            cache keys, so that a store converted again does not hit stale cache entries.
    """

    def __init__(
        self,
        array_url: str,
        meta: dict[str, Any],
        storage_options: StorageOptions | None = None,
        cache_shards: int = 4096,
        *,
        stream: StreamOptions | None = None,
        cache: ShardCache | None = None,
        stats: IOStats | None = None,
        token: str = "",
    ) -> None:
        ShardedArray.__init__(self, array_url, meta, storage_options)
        self.n_chunks = int(np.prod(self.per_shard))
        self._index: OrderedDict[tuple[int, ...], np.ndarray | None] = OrderedDict()
        self._cache_shards = cache_shards
        self._lock = threading.Lock()
        self.stats = stats
        self._remote: RemoteChunks | None = None
        if self.remote:
            self._remote = RemoteChunks(
                self,
                array_url,
                storage_options,
                stream or StreamOptions(),
                cache,
                stats,
                token,
                read_pool,
            )

    # -- shard index ---------------------------------------------------------------------------
    def known_index(self, shard: tuple[int, ...]) -> tuple[bool, np.ndarray | None]:
        """(known, index) of a shard from the in-memory cache (index None: shard not stored)."""
        with self._lock:
            if shard in self._index:
                self._index.move_to_end(shard)
                return True, self._index[shard]
        return False, None

    def remember_index(self, shard: tuple[int, ...], index: np.ndarray | None) -> None:
        """Keep a shard's index in memory (None: the shard is not stored)."""
        with self._lock:
            self._index[shard] = index
            if len(self._index) > self._cache_shards:
                self._index.popitem(last=False)

    def _read_index(self, shard: tuple[int, ...]) -> np.ndarray | None:
        known, index = self.known_index(shard)
        if known:
            return index
        nbytes = self.index_nbytes
        path = self._shard_path(shard)
        try:
            with open(path, "rb") as fh:
                fh.seek(-nbytes, os.SEEK_END)
                raw = fh.read(nbytes)
        except FileNotFoundError:
            index = None
        else:
            index = self.parse_index(raw, path)
        self.remember_index(shard, index)
        return index

    # -- chunks -----------------------------------------------------------------------------
    def split(self, chunk: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(shard, position inside the shard) of a chunk."""
        shard = tuple(c // p for c, p in zip(chunk, self.per_shard, strict=True))
        inner = tuple(c % p for c, p in zip(chunk, self.per_shard, strict=True))
        return shard, inner

    def read_chunk(self, chunk: tuple[int, ...]) -> np.ndarray:
        """One inner chunk by its chunk-grid coordinates: array of shape ``self.chunk``."""
        if self._remote is not None:
            return self.read_chunks([chunk])[0]
        if self.stats is not None:
            self.stats.add(patches_read=1)
        return self._read_local(tuple(chunk))

    def _read_local(self, chunk: tuple[int, ...]) -> np.ndarray:
        shard, inner = self.split(chunk)
        index = self._read_index(shard)
        if index is None:
            return self.empty_chunk()
        offset, length = (int(v) for v in index[inner])
        if offset == EMPTY:
            return self.empty_chunk()
        fd = os.open(self._shard_path(shard), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return self.decode_chunk(data, chunk)

    def read_chunks(self, chunks: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Many chunks, in the order given.

        Local arrays: read and decoded in parallel threads. Remote arrays: the chunks of a
        shard in one request (or from the shard cache), all shards at once, decoded as their
        bytes arrive.

        Raises:
            StorageAccessError: remote storage refused a request, or kept failing.
        """
        if self._remote is not None:
            return self._remote.read(chunks)
        if self.stats is not None:
            self.stats.add(patches_read=len(chunks))
        if len(chunks) <= 1:
            return [self._read_local(tuple(c)) for c in chunks]
        return list(read_pool().map(lambda c: self._read_local(tuple(c)), chunks))


def _check_crc(raw: bytes | memoryview, path: str) -> None:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - zarr depends on it
        return
    want = int.from_bytes(raw[-4:], "little")
    if len(raw) < 4 or google_crc32c.value(bytes(raw[:-4])) != want:
        raise StoreError(f"{path}: shard index checksum mismatch (corrupt shard); reconvert")
