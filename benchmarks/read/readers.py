"""Readers under test besides ours: OpenSlide ``read_region`` and the no-zarr floor."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.read.settings import PATCH


def openslide_reader(slide: Any) -> Callable[[int, int], np.ndarray]:
    """``read(row, col)``: the level-0 patch at that cell via OpenSlide ``read_region``, RGB."""

    def read(r: int, c: int) -> np.ndarray:
        img = slide.read_region((int(c) * PATCH, int(r) * PATCH), 0, (PATCH, PATCH))
        return np.asarray(img.convert("RGB"))

    return read


class FloorReader:
    """Chunks of a sharded level read without zarr: pread (shard index once), pread, decode.

    Only for the layout our converter writes (one inner chunk per patch, index at the shard's
    end as little-endian (offset, nbytes) uint64 pairs + crc32c, one bytes-to-bytes codec).
    """

    def __init__(self, store_path: str, level: int = 0) -> None:
        meta = json.loads((Path(store_path) / str(level) / "zarr.json").read_text())
        (shard_codec,) = meta["codecs"]
        if shard_codec["name"] != "sharding_indexed":
            raise ValueError("level is not sharded")
        conf = shard_codec["configuration"]
        self.chunk = conf["chunk_shape"]
        self.shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if conf.get("index_location", "end") != "end":
            raise ValueError("shard index not at the end")
        names = [c["name"] for c in conf["index_codecs"]]
        if names not in (["bytes", "crc32c"], ["bytes"]):
            raise ValueError(f"unexpected index codecs {names}")
        self.n_chunks = int(np.prod([s // c for s, c in zip(self.shard, self.chunk, strict=True)]))
        self.index_bytes = 16 * self.n_chunks + (4 if "crc32c" in names else 0)
        codecs = conf["codecs"]
        if [c["name"] for c in codecs][0] != "bytes" or len(codecs) > 2:
            raise ValueError(f"unexpected chunk codecs {codecs}")
        self.decode = _bytes_codec(codecs[1] if len(codecs) == 2 else None)
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        self.prefix = "c" + sep if meta["chunk_key_encoding"]["name"] == "default" else ""
        self.sep = sep
        self.root = Path(store_path) / str(level)
        self.per_shard = [s // c for s, c in zip(self.shard, self.chunk, strict=True)]
        self._index: dict[str, np.ndarray] = {}  # shard indexes, read once (as ours does)

    def read(self, r: int, c: int) -> np.ndarray:
        """The (3, P, P) chunk of cell (r, c) of level 0."""
        sy, iy = divmod(int(r), self.per_shard[1])
        sx, ix = divmod(int(c), self.per_shard[2])
        key = self.prefix + self.sep.join(["0", str(sy), str(sx)])
        fd = os.open(self.root / key, os.O_RDONLY)
        try:
            index = self._index.get(key)
            if index is None:
                size = os.fstat(fd).st_size
                raw = os.pread(fd, self.index_bytes, size - self.index_bytes)
                index = np.frombuffer(raw[: 16 * self.n_chunks], "<u8").reshape(-1, 2)
                self._index[key] = index
            off, nbytes = index[iy * self.per_shard[2] + ix]
            if int(nbytes) == 2**64 - 1:  # empty chunk: the fill value
                return np.full(self.chunk, 255, np.uint8)
            data = os.pread(fd, int(nbytes), int(off))
        finally:
            os.close(fd)
        return np.frombuffer(self.decode(data), np.uint8).reshape(self.chunk)


def _bytes_codec(conf: dict[str, Any] | None) -> Callable[[bytes], Any]:
    """The decode function of a Zarr v3 bytes-to-bytes codec entry (None: no codec)."""
    if conf is None:
        return lambda b: b
    if conf["name"] == "blosc":
        from numcodecs import Blosc

        return Blosc().decode
    if conf["name"] == "zstd":
        from numcodecs import Zstd

        return Zstd().decode
    raise ValueError(f"unsupported codec {conf['name']}")
