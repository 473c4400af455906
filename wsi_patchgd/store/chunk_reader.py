"""Fast reads of whole chunks (= patches) from sharded Zarr v3 arrays.

A training patch of a store is exactly one chunk, so a patch read is: look up the chunk's
(offset, length) in its shard's index, read those bytes (``os.pread`` locally, a byte-range
request through fsspec remotely), decode. Shard indexes are read once and cached (they are
~1 KB per shard), so after warm-up one patch costs one read and one decode, with no per-call
asyncio round trip. This module implements only what the Zarr v3 sharding spec says for
``index_location: end`` with ``bytes`` + ``crc32c`` index codecs, which is what
:mod:`wsi_patchgd.store.convert` writes; anything else falls back to zarr's own reader.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..io import StorageOptions, filesystem, is_remote, local_path
from .jpeg import CODEC_NAME as JPEG_CODEC
from .jpeg import JpegTileCodec

_EMPTY = np.uint64(2**64 - 1)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One read/decode pool for every store of the process (threads are not per store)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            n = int(os.environ.get("WSI_PATCHGD_READ_THREADS", 0)) or min(
                16, 2 * (os.cpu_count() or 1)
            )
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="wsi-read")
        return _POOL


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
        self._codec: Any = None
        self.jpeg: JpegTileCodec | None = None
        inner = cfg["codecs"][1:]
        if cfg["codecs"][0]["name"] == JPEG_CODEC:
            self.jpeg = JpegTileCodec.from_dict(cfg["codecs"][0])
        elif inner:
            conf = dict(inner[0].get("configuration", {}))
            if inner[0]["name"] == "blosc":
                shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[
                    conf.get("shuffle", "noshuffle")
                ]
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

    def decode(self, data: bytes) -> np.ndarray:
        """One stored chunk's bytes -> array of shape ``self.chunk``."""
        if self.jpeg is not None:
            return self.jpeg.decode_chunk(data, self.chunk)
        if self._codec is not None:
            data = self._codec.decode(data)
        return np.frombuffer(data, np.uint8).reshape(self.chunk)


class ChunkReader(ShardedArray):
    """Reads whole inner chunks of one sharded uint8 array, thread-parallel.

    Args:
        array_url: URL of the array (``<store>/<level>``).
        meta: the array's zarr.json as a dict (must satisfy :func:`supports`).
        storage_options: fsspec options for remote URLs.
        cache_shards: shard indexes kept in memory.
    """

    def __init__(
        self,
        array_url: str,
        meta: dict[str, Any],
        storage_options: StorageOptions | None = None,
        cache_shards: int = 4096,
    ) -> None:
        ShardedArray.__init__(self, array_url, meta, storage_options)
        self.n_chunks = int(np.prod(self.per_shard))
        self._index: OrderedDict[tuple[int, ...], np.ndarray | None] = OrderedDict()
        self._cache_shards = cache_shards
        self._lock = threading.Lock()

    # -- shard index ---------------------------------------------------------------------------
    def _read_index(self, shard: tuple[int, ...]) -> np.ndarray | None:
        with self._lock:
            if shard in self._index:
                self._index.move_to_end(shard)
                return self._index[shard]
        nbytes = self.n_chunks * 16 + 4
        path = self._shard_path(shard)
        raw: bytes | None
        try:
            if self.remote:
                size = self._fs.size(path)
                raw = self._fs.cat_file(path, start=size - nbytes, end=size)
            else:
                with open(path, "rb") as fh:
                    fh.seek(-nbytes, os.SEEK_END)
                    raw = fh.read(nbytes)
        except FileNotFoundError:
            raw = None
        index = None
        if raw is not None:
            _check_crc(raw, path)
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard + (2,))
        with self._lock:
            self._index[shard] = index
            if len(self._index) > self._cache_shards:
                self._index.popitem(last=False)
        return index

    # -- chunks -----------------------------------------------------------------------------
    def read_chunk(self, chunk: tuple[int, ...]) -> np.ndarray:
        """One inner chunk by its chunk-grid coordinates: array of shape ``self.chunk``."""
        shard = tuple(c // p for c, p in zip(chunk, self.per_shard, strict=True))
        inner = tuple(c % p for c, p in zip(chunk, self.per_shard, strict=True))
        index = self._read_index(shard)
        if index is None:
            return np.full(self.chunk, self.fill, np.uint8)
        offset, length = (int(v) for v in index[inner])
        if np.uint64(offset) == _EMPTY:
            return np.full(self.chunk, self.fill, np.uint8)
        path = self._shard_path(shard)
        if self.remote:
            data = self._fs.cat_file(path, start=offset, end=offset + length)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        out = self.decode(data)
        if self.jpeg is not None:  # a source tile runs past the image edge: fill value there
            ext = [min(c, n - i * c) for i, c, n in zip(chunk, self.chunk, self.shape, strict=True)]
            if ext != list(self.chunk):
                out[:, ext[1] :, :] = self.fill
                out[:, :, ext[2] :] = self.fill
        return out

    def read_chunks(self, chunks: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Many chunks, read and decoded in parallel threads, in the order given."""
        if len(chunks) <= 1:
            return [self.read_chunk(tuple(c)) for c in chunks]
        return list(_pool().map(lambda c: self.read_chunk(tuple(c)), chunks))


def _check_crc(raw: bytes, path: str) -> None:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - zarr depends on it
        return
    want = int.from_bytes(raw[-4:], "little")
    if google_crc32c.value(raw[:-4]) != want:
        from ..errors import StoreError

        raise StoreError(f"{path}: shard index checksum mismatch (corrupt shard); reconvert")
