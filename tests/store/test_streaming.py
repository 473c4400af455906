"""Streaming stores from S3: a real moto server behind a real fault/latency proxy on 127.0.0.1.

Concurrent requests, one request per shard, retries of throttling / 5xx / timeouts, one clear
error for a forbidden object, the shard cache, both backends (fsspec and obstore).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CMU
from wsi_patchgd.data import StorePatchSource
from wsi_patchgd.errors import StorageAccessError
from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many
from wsi_patchgd.store.iostats import IOStats
from wsi_patchgd.store.remote import StreamOptions, coalesce
from wsi_patchgd.store.retry import RetryPolicy, classify
from wsi_patchgd.testing import FaultProxy, fault_proxy

OPTS = ConvertOptions(patch_size=128, shard_patches=4, min_level_size=256)
NAME = "cmu-1-small-region.zarr"
FAST = RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.1, timeout=10.0)
BACKENDS = ["fsspec", "obstore"]


@pytest.fixture(scope="module")
def stores(
    s3_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> tuple[str, str]:
    """CMU converted locally and into a bucket: (local store, s3 store)."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server["endpoint_url"])
    fs.mkdir("streaming")
    out = tmp_path_factory.mktemp("streaming")
    for dest in (str(out), "s3://streaming/s"):
        res = convert_many([str(CMU)], dest, OPTS, workers=1, quiet=True, store_options=s3_server)
        assert [r.status for r in res] == ["ok"], res
    return str(out / NAME), f"s3://streaming/s/{NAME}"


@pytest.fixture(scope="module")
def proxy(s3_server: dict[str, str]) -> Iterator[FaultProxy]:
    with fault_proxy(s3_server["endpoint_url"]) as px:
        yield px


@pytest.fixture()
def via_proxy(proxy: FaultProxy, s3_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """Storage options that go through the proxy; its faults are cleared after the test."""
    proxy.reset_stats()
    yield {**s3_server, "endpoint_url": proxy.url}
    proxy.configure(latency_ms=0, fail_fraction=0.0, stall_fraction=0.0, deny=[], match="")


def _all(store: SlideStore) -> tuple[np.ndarray, np.ndarray]:
    n_h, n_w = store.grid_shape(0)
    rows, cols = np.divmod(np.arange(n_h * n_w), n_w)
    return rows, cols


def _n_shards(store: SlideStore) -> int:
    n_h, n_w = store.grid_shape(0)
    return -(-n_h // 4) * -(-n_w // 4)


def test_coalesce_merges_close_ranges_only() -> None:
    groups = coalesce([(100, 200), (0, 50), (260, 300), (5000, 5100)], gap=60, max_size=1000)
    assert groups == [(0, 300, [1, 0, 2]), (5000, 5100, [3])]
    assert len(coalesce([(0, 600), (600, 1200)], gap=10, max_size=1000)) == 2  # size cap
    assert len(coalesce([(0, 50), (100, 200)], gap=40, max_size=1000)) == 2  # gap


def test_backoff_grows_and_is_jittered() -> None:
    p = RetryPolicy(base_delay=0.1, max_delay=1.0)
    rng = random.Random(0)
    d = np.array([[p.delay(a, rng) for _ in range(20)] for a in (1, 2, 3, 4, 10)])
    assert (d.min(axis=1) >= [0.05, 0.1, 0.2, 0.4, 0.5]).all()
    assert (d.max(axis=1) <= [0.1, 0.2, 0.4, 0.8, 1.0]).all()
    assert len(set(d[3].round(6))) > 1, "jitter"


def test_errors_are_sorted_into_missing_transient_permanent() -> None:
    from botocore.exceptions import ClientError

    def client_error(status: int, code: str) -> ClientError:
        resp = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(resp, "GetObject")  # type: ignore[arg-type]

    assert classify(FileNotFoundError("x")) == "missing"
    assert classify(client_error(503, "SlowDown")) == "transient"
    assert classify(client_error(500, "InternalError")) == "transient"
    assert classify(client_error(429, "TooManyRequests")) == "transient"
    assert classify(TimeoutError()) == "transient"
    assert classify(ConnectionResetError()) == "transient"
    assert classify(client_error(403, "AccessDenied")) == "permanent"
    assert classify(client_error(416, "InvalidRange")) == "permanent"
    assert classify(PermissionError("no")) == "permanent"
    wrapped = OSError(5, "Please reduce your request rate")
    wrapped.__cause__ = client_error(503, "SlowDown")
    assert classify(wrapped) == "transient"  # s3fs re-raises ClientErrors as OSError


@pytest.mark.parametrize("backend", BACKENDS)
def test_remote_reads_equal_local_one_request_per_shard(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy, backend: str
) -> None:
    local = SlideStore(stores[0])
    stats = IOStats()
    remote = SlideStore(stores[1], via_proxy, stream=StreamOptions(backend=backend), stats=stats)
    rows, cols = _all(local)
    remote.chunk_reader(0)  # the level's metadata (through zarr): not a patch read
    proxy.reset_stats()
    np.testing.assert_array_equal(
        remote.read_patches(0, rows, cols), local.read_patches(0, rows, cols)
    )
    io = stats.take()
    shards = _n_shards(local)
    assert io["patches_read"] == rows.size
    # storage order, whole grid: every shard is read whole, once (no index request first)
    assert io["requests"] <= shards, io
    assert proxy.stats()["requests"] == io["requests"]
    # random patches: the index of each shard is known now, its chunks come in ~1 request
    rng = np.random.default_rng(1)
    pick = rng.choice(rows.size, 40, replace=False)
    np.testing.assert_array_equal(
        remote.read_patches(0, rows[pick], cols[pick]),
        local.read_patches(0, rows[pick], cols[pick]),
    )
    assert stats.take()["requests"] <= shards


def test_tens_of_requests_in_flight_whatever_the_cores(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy
) -> None:
    """200 ms per request: 40 patches of ~all shards arrive in about two round trips."""
    local = SlideStore(stores[0])
    rows, cols = _all(local)
    pick = np.random.default_rng(2).choice(rows.size, 40, replace=False)
    proxy.configure(latency_ms=200)
    remote = SlideStore(stores[1], via_proxy)
    remote.array(0)  # metadata: not timed
    proxy.reset_stats()
    t0 = time.perf_counter()
    got = remote.read_patches(0, rows[pick], cols[pick])
    took = time.perf_counter() - t0
    np.testing.assert_array_equal(got, local.read_patches(0, rows[pick], cols[pick]))
    st = proxy.stats()
    assert st["max_in_flight"] >= 16, st  # the old reader: at most 2 x cores
    # index round + data round (+ slack for a busy machine); one request at a time: ~10 s
    assert took < 0.2 * st["requests"] / 4, (took, st)


@pytest.mark.parametrize("backend", BACKENDS)
def test_throttling_and_server_errors_are_retried(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy, backend: str
) -> None:
    local = SlideStore(stores[0])
    rows, cols = _all(local)
    proxy.configure(fail_fraction=0.3, fail_status=503, match="/0/c/", seed=3)
    stats = IOStats()
    stream = StreamOptions(backend=backend, retry=FAST)
    remote = SlideStore(stores[1], via_proxy, stream=stream, stats=stats)
    pick = np.random.default_rng(4).choice(rows.size, 60, replace=False)
    np.testing.assert_array_equal(
        remote.read_patches(0, rows[pick], cols[pick]),
        local.read_patches(0, rows[pick], cols[pick]),
    )
    proxy.configure(fail_status=500, seed=5)
    np.testing.assert_array_equal(
        remote.read_patches(0, rows, cols), local.read_patches(0, rows, cols)
    )
    io = stats.take()
    assert io["retries"] > 0 and proxy.stats()["failed"] >= io["retries"] // 2, io


def test_timeouts_are_retried(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy
) -> None:
    local = SlideStore(stores[0])
    rows, cols = _all(local)
    proxy.configure(stall_fraction=0.25, stall_s=5.0, match="/0/c/", seed=6)
    stats = IOStats()
    policy = RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.05, timeout=0.5)
    remote = SlideStore(stores[1], via_proxy, stream=StreamOptions(retry=policy), stats=stats)
    pick = np.random.default_rng(7).choice(rows.size, 30, replace=False)
    t0 = time.perf_counter()
    np.testing.assert_array_equal(
        remote.read_patches(0, rows[pick], cols[pick]),
        local.read_patches(0, rows[pick], cols[pick]),
    )
    assert time.perf_counter() - t0 < 5.0  # no try waited out a stall
    assert stats.take()["retries"] > 0 and proxy.stats()["stalled"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forbidden_object_is_one_clear_error(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy, backend: str
) -> None:
    proxy.configure(deny=["/0/c/0/1/1"])
    src = StorePatchSource(
        [stores[1]], 0, tissue_threshold=0.0, storage_options=via_proxy,
        stream=StreamOptions(backend=backend, retry=FAST),
    )  # fmt: skip
    grid = src.grid(0)
    rows, cols = np.divmod(np.arange(grid.n_patches), grid.shape[1])
    in_shard = np.flatnonzero((rows // 4 == 1) & (cols // 4 == 1))
    with pytest.raises(StorageAccessError) as err:
        src.read(0, in_shard[:3])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{stores[1]}/0/c/0/1/1: access denied"), msg
    assert proxy.stats()["denied"] == 1  # not retried


def test_endless_throttling_gives_up_with_the_url(
    stores: tuple[str, str], via_proxy: dict[str, str], proxy: FaultProxy
) -> None:
    proxy.configure(fail_fraction=1.0, fail_status=503, match="/0/c/")
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
    remote = SlideStore(stores[1], via_proxy, stream=StreamOptions(retry=policy))
    with pytest.raises(StorageAccessError, match=r"/0/c/0/0/0: the object store still fails "
                       r"after 3 tries .*503.*retry later"):  # fmt: skip
        remote.read_patches(0, [0], [0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shard_cache_serves_the_second_epoch(
    stores: tuple[str, str], via_proxy: dict[str, str], tmp_path: Path, backend: str
) -> None:
    local = StorePatchSource([stores[0]], 0)
    kw = {"cache_dir": str(tmp_path / "cache"), "cache_size": "1GB",
          "stream": StreamOptions(backend=backend)}  # fmt: skip
    src = StorePatchSource([stores[1]], 0, storage_options=via_proxy, **kw)
    grid = src.grid(0)
    order = src.storage_order(0, grid.tissue_indices())
    reads = [order[i : i + 16] for i in range(0, order.size, 16)]
    src.take_io_stats()  # the opening reads are not patches
    src.prefetch([(0, r) for r in reads])
    for r in reads:
        np.testing.assert_array_equal(src.read(0, r).numpy(), local.read(0, r).numpy())
    first = src.take_io_stats()
    assert first["cache_misses"] > 0 and first["requests"] <= _n_shards(SlideStore(stores[0]))
    assert first["cache_bytes_written"] == first["bytes_fetched"] > 0
    # epoch 2, a new process' worth of state (new source, same directory): no request at all
    again = StorePatchSource([stores[1]], 0, storage_options=via_proxy, **kw)
    again.grid(0)
    again.take_io_stats()
    for r in reads:
        np.testing.assert_array_equal(again.read(0, r).numpy(), local.read(0, r).numpy())
    second = again.take_io_stats()
    assert second["requests"] == 0 and second["cache_hits"] == order.size, second
    assert again.take_io_stats()["cache_hits"] == 0  # take resets
    clone = pickle.loads(pickle.dumps(again))  # DataLoader workers / spawn
    np.testing.assert_array_equal(clone.read(0, reads[0]).numpy(), local.read(0, reads[0]).numpy())
    assert clone.take_io_stats()["cache_hits"] == reads[0].size


_INHERITED: list[Any] = []


def _read_in_child(idx: np.ndarray) -> int:
    return int(_INHERITED[0].read(0, idx).numpy().astype(np.int64).sum())


def test_a_forked_child_reads_with_what_it_inherited(
    stores: tuple[str, str], s3_server: dict[str, str]
) -> None:
    """A DataLoader-style fork after the parent read: the child's copies of the event loop
    and of the thread pool run no thread, so it must make its own (else it hangs)."""
    src = StorePatchSource([stores[1]], 0, storage_options=s3_server)
    idx = src.grid(0).tissue_indices()[:8]
    want = int(src.read(0, idx).numpy().astype(np.int64).sum())
    _INHERITED[:] = [src]
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_read_in_child, (idx,)).get(timeout=60) == want
