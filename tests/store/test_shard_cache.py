"""The on-disk shard cache: sizes, atomic files, LRU eviction, several processes at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.store.cache import ShardCache, parse_size, shard_cache


def test_sizes_parse() -> None:
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2e9") == 2 * 10**9
    assert parse_size(1000) == 1000
    for bad in ("lots", "-1GB", "0", "12 parsecs"):
        with pytest.raises(ConfigError, match="data.cache_size"):
            parse_size(bad)


def test_put_open_and_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path, max_bytes=10_000)
    keys = [ShardCache.key(f"s3://b/s.zarr/0/c/0/0/{i}", "tok") for i in range(4)]
    for i, k in enumerate(keys[:3]):
        cache.put(k, bytes([i]) * 3000)
        os.utime(cache.path(k), (1000 + i, 1000 + i))  # oldest first
    h = cache.open(keys[0])  # a hit makes keys[0] the most recently used
    assert h is not None and os.pread(h.fd, 4, 0) == b"\0" * 4
    h.release()
    cache._touched.clear()  # noqa: SLF001 - let the next hit refresh the mtime now
    cache.open(keys[0]).release()  # type: ignore[union-attr]
    cache.put(keys[3], b"\3" * 3000)  # 12 000 > 10 000: evict down to 9 000
    present = [cache.path(k).exists() for k in keys]
    assert present == [True, False, True, True]
    assert cache.size() <= 10_000
    assert not list((tmp_path / "tmp").iterdir())  # nothing half-written left
    assert cache.put(keys[1], b"x" * 20_000) == 0 and not cache.path(keys[1]).exists()
    assert ShardCache.key("s3://b/x", "a") != ShardCache.key("s3://b/x", "b")  # reconverted


def test_an_open_file_survives_eviction(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path, max_bytes=5_000)
    a, b = ShardCache.key("a", "t"), ShardCache.key("b", "t")
    cache.put(a, b"a" * 4000)
    h = cache.open(a)
    assert h is not None
    os.utime(cache.path(a), (1000, 1000))
    cache.put(b, b"b" * 4000)  # evicts a while it is open
    assert not cache.path(a).exists()
    assert os.pread(h.fd, 4000, 0) == b"a" * 4000  # the reader keeps reading
    h.release()


def _writer(directory: str, worker: int, n: int, size: int) -> int:
    """A process writing and reading n shards in a shared cache; returns bad reads."""
    cache = shard_cache(directory, 40 * size)
    rng = np.random.default_rng(worker)
    bad = 0
    for _ in range(n):
        i = int(rng.integers(0, 60))
        key = ShardCache.key(f"s3://b/s/0/c/0/{i}", "t")
        payload = bytes([i]) * size
        h = cache.open(key)
        if h is None:
            cache.put(key, payload)
            continue
        try:
            got = os.pread(h.fd, size + 1, 0)
        finally:
            h.release()
        bad += got != payload
    return bad


def test_processes_share_one_cache_directory(tmp_path: Path) -> None:
    size = 20_000
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(3) as pool:
        bad = pool.starmap(_writer, [(str(tmp_path), w, 300, size) for w in range(3)])
    assert bad == [0, 0, 0]  # no torn or mixed-up file was ever read
    cache = ShardCache(tmp_path, 40 * size)
    assert cache.size() <= 40 * size * 1.05  # under the limit (+ one write in flight)
    assert all(f.stat().st_size == size for f in tmp_path.glob("*/*.shard"))
    assert time.perf_counter() - t0 < 60
