"""Many concurrent byte-range reads of remote objects, off one event loop.

:class:`ObjectFetcher` reads objects under one remote URL (a store level's shards): whole
objects, suffixes (a shard's index) and sets of byte ranges, which it coalesces (ranges of one
object closer than ``coalesce_gap`` become one request). Every request runs on one background
event loop per process, with up to ``max_in_flight`` requests in flight whatever the core
count, each under :func:`~wsi_patchgd.store.retry.with_retries`.

Two backends send the requests: ``fsspec`` (the async filesystem of the URL: s3fs, gcsfs,
adlfs ...; a sync one runs in threads) and ``obstore`` (Rust ``object_store`` clients for
``s3://`` and ``gs://``, where installed). ``auto`` is fsspec: it reads every protocol, with the
same options and credential chain as the rest of the package (``~/.aws`` profiles included).
obstore costs about half the CPU per request and streamed 10-30 % faster from a cold cache in
``benchmarks/bench_stream.py``, but takes its credentials from the options and the environment
only: choose it with ``data.remote_backend: obstore``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..io import StorageOptions, filesystem, storage_options_from_env
from .iostats import IOStats
from .retry import RetryPolicy, with_retries

T = TypeVar("T")

BACKENDS = ("auto", "fsspec", "obstore")


@dataclass(frozen=True)
class StreamOptions:
    """How remote stores are read.

    Attributes:
        backend: ``auto`` | ``fsspec`` | ``obstore`` (see the module docstring).
        max_in_flight: requests in flight at once in this process (per backend client).
        coalesce_gap: byte ranges of one object less than this apart are read in one request.
        max_request: a coalesced request is at most this many bytes.
        whole_shard_fraction: without a cache, a shard whose index is not known yet is read
            whole (one request, index included) when at least this fraction of its chunks is
            wanted; else its index is read first, then the chunks' ranges.
        retry: tries, backoff and timeouts of each request.
    """

    backend: str = "auto"
    max_in_flight: int = 64
    coalesce_gap: int = 1 << 20
    max_request: int = 64 << 20
    whole_shard_fraction: float = 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"data.remote_backend = {self.backend!r}: use one of {', '.join(BACKENDS)}"
            )
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight={self.max_in_flight}: must be >= 1")


def coalesce(
    ranges: Sequence[tuple[int, int]], gap: int, max_size: int
) -> list[tuple[int, int, list[int]]]:
    """Group byte ranges ``[start, end)`` into requests: ``(start, end, member indices)``.

    Ranges (sorted by start) join the previous request while they start at most ``gap`` bytes
    after its end and the request stays within ``max_size`` bytes.
    """
    groups: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(ranges)), key=lambda j: ranges[j][0]):
        s, e = ranges[i]
        if groups:
            gs, ge, members = groups[-1]
            if s - ge <= gap and max(e, ge) - gs <= max_size:
                groups[-1] = (gs, max(e, ge), [*members, i])
                continue
        groups.append((s, e, [i]))
    return groups


# -- the event loop ------------------------------------------------------------------------------
def io_loop() -> asyncio.AbstractEventLoop:
    """The process's I/O event loop (fsspec's, in its own thread; renewed after a fork)."""
    import fsspec.asyn

    return fsspec.asyn.get_loop()


def run(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run a coroutine on the I/O loop from a plain thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop or io_loop()).result()


_SEMAPHORES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
_SEM_LOCK = threading.Lock()


def _semaphore(limit: int) -> asyncio.Semaphore:
    """The running loop's semaphore of ``limit`` requests in flight (one per loop and limit)."""
    loop = asyncio.get_running_loop()
    with _SEM_LOCK:
        per_loop = _SEMAPHORES.setdefault(loop, {})
        if limit not in per_loop:
            per_loop[limit] = asyncio.Semaphore(limit)
        return per_loop[limit]


# -- backends ------------------------------------------------------------------------------------
class Backend(Protocol):
    """Sends one GET: the whole object, a range ``[start, end)``, or the last ``suffix`` bytes."""

    name: str
    loop: asyncio.AbstractEventLoop

    def url(self, key: str) -> str:
        """The full URL of an object key (for messages)."""
        ...

    async def get(
        self, key: str, start: int | None = None, end: int | None = None, suffix: int | None = None
    ) -> bytes | memoryview:
        """One request; raises the client library's exceptions."""
        ...


class FsspecBackend:
    """Requests through the URL's fsspec filesystem (async ones on their own loop)."""

    name = "fsspec"

    def __init__(self, root_url: str, storage_options: StorageOptions | None, limit: int) -> None:
        self.fs, self.root = filesystem(root_url, storage_options, streaming=limit)
        self.root = self.root.rstrip("/")
        self.is_async = bool(getattr(self.fs, "async_impl", False))
        self.loop = self.fs.loop if self.is_async else io_loop()
        self._root_url = root_url.rstrip("/")
        self._s3 = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else ())

    def url(self, key: str) -> str:
        return f"{self._root_url}/{key}"

    async def get(
        self, key: str, start: int | None = None, end: int | None = None, suffix: int | None = None
    ) -> bytes | memoryview:
        path = f"{self.root}/{key}"
        if suffix is not None:
            start, end = -suffix, None
        if self.is_async:
            kw = {"max_concurrency": 1} if self._s3 and start is None else {}  # no HEAD first
            return bytes(await self.fs._cat_file(path, start=start, end=end, **kw))
        call = functools.partial(self.fs.cat_file, path, start=start, end=end)
        return bytes(await asyncio.get_running_loop().run_in_executor(None, call))


class ObstoreBackend:
    """Requests through obstore (``s3://``, ``gs://``): the fsspec options are translated."""

    name = "obstore"

    def __init__(self, root_url: str, storage_options: StorageOptions | None, limit: int) -> None:
        self.store, self.prefix = obstore_store(root_url, storage_options, limit)
        self.loop = io_loop()
        self._root_url = root_url.rstrip("/")

    def url(self, key: str) -> str:
        return f"{self._root_url}/{key}"

    async def get(
        self, key: str, start: int | None = None, end: int | None = None, suffix: int | None = None
    ) -> bytes | memoryview:
        import obstore

        path = f"{self.prefix}/{key}" if self.prefix else key
        if suffix is not None or start is None:
            opts: Any = {"range": {"suffix": suffix}} if suffix is not None else {}
            res = await obstore.get_async(self.store, path, options=opts)
            return memoryview(await res.bytes_async())
        if end is None:
            raise ValueError("a range needs its end")
        return memoryview(await obstore.get_range_async(self.store, path, start=start, end=end))


def obstore_store(
    root_url: str, storage_options: StorageOptions | None, limit: int = 64
) -> tuple[Any, str]:
    """An obstore store for an ``s3://`` or ``gs://`` URL and the key prefix inside it.

    The usual fsspec options are translated: s3fs ``endpoint_url`` (or
    ``client_kwargs.endpoint_url``), ``key`` / ``secret`` / ``token``, ``anon``,
    ``client_kwargs.region_name``; gcsfs ``endpoint_url`` (an emulator), ``token`` (``anon`` or
    a service-account file). Anything else comes from the environment as obstore reads it.
    Retries are :func:`~wsi_patchgd.store.retry.with_retries`'s, so obstore's are off.

    Raises:
        ConfigError: obstore is not installed, or the URL is not s3:// or gs://.
    """
    try:
        from obstore.store import GCSStore, S3Store
    except ImportError as exc:
        raise ConfigError(
            "data.remote_backend = 'obstore' needs obstore: pip install obstore"
        ) from exc
    parts = urlsplit(root_url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    so = storage_options_from_env(root_url, storage_options)
    ck = dict(so.get("client_kwargs") or {})
    client: Any = {"pool_max_idle_per_host": str(limit)}
    retry: Any = {"max_retries": 0}
    if parts.scheme in ("s3", "s3a"):
        cfg: Any = {}
        endpoint = so.get("endpoint_url") or ck.get("endpoint_url")
        if endpoint:
            cfg["endpoint"] = endpoint
            cfg["virtual_hosted_style_request"] = False
            client["allow_http"] = str(endpoint).startswith("http://")
        for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"),
                             ("token", "token")):  # fmt: skip
            if so.get(ours):
                cfg[theirs] = so[ours]
        region = ck.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
        cfg["region"] = region or "us-east-1"
        if so.get("anon"):
            cfg["skip_signature"] = True
        return S3Store(bucket, config=cfg, client_options=client, retry_config=retry), prefix
    if parts.scheme in ("gs", "gcs"):
        gcfg: Any = {}
        endpoint = so.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
        token = so.get("token")
        if endpoint:
            client["allow_http"] = str(endpoint).startswith("http://")
            gcfg["service_account_key"] = json.dumps(
                {"gcs_base_url": str(endpoint).rstrip("/"), "disable_oauth": True,
                 "client_email": "", "private_key": "", "private_key_id": ""}
            )  # fmt: skip
        elif token == "anon":
            gcfg["skip_signature"] = True
        elif isinstance(token, str) and os.path.exists(token):
            gcfg["service_account"] = token
        return GCSStore(bucket, config=gcfg, client_options=client, retry_config=retry), prefix
    raise ConfigError(f"{root_url}: the obstore backend reads s3:// and gs:// only")


def make_backend(root_url: str, storage_options: StorageOptions | None, opts: StreamOptions) -> Any:
    """The backend ``opts.backend`` names for ``root_url`` (``auto``: fsspec)."""
    if opts.backend == "obstore":
        return ObstoreBackend(root_url, storage_options, opts.max_in_flight)
    return FsspecBackend(root_url, storage_options, opts.max_in_flight)


# -- the fetcher ---------------------------------------------------------------------------------
class ObjectFetcher:
    """Reads the objects under one remote URL: whole, by suffix, or by (coalesced) ranges.

    Every method is a coroutine for :attr:`loop` (see :func:`run`).

    Args:
        root_url: the URL the keys are relative to (``s3://bucket/slide.zarr/0``).
        storage_options: fsspec options of the URL.
        options: backend, concurrency, coalescing, retries.
    """

    def __init__(
        self,
        root_url: str,
        storage_options: StorageOptions | None = None,
        options: StreamOptions | None = None,
    ) -> None:
        self.options = options or StreamOptions()
        self.backend = make_backend(root_url, storage_options, self.options)
        self.loop: asyncio.AbstractEventLoop = self.backend.loop

    def url(self, key: str) -> str:
        """The full URL of an object key."""
        return str(self.backend.url(key))

    async def _get(self, key: str, stats: IOStats | None, **rng: int | None) -> bytes | memoryview:
        sem = _semaphore(self.options.max_in_flight)

        async def attempt() -> bytes | memoryview:
            async with sem:
                return await self.backend.get(key, **rng)

        data = await with_retries(attempt, self.url(key), self.options.retry, stats)
        if stats is not None:
            stats.add(bytes_fetched=len(data))
        # a server may ignore a Range header and send the whole object (HTTP allows it; the
        # GCS emulator does for suffix ranges): keep what was asked for
        suffix, start, end = rng.get("suffix"), rng.get("start"), rng.get("end")
        if suffix is not None and len(data) > suffix:
            data = memoryview(data)[-suffix:]
        elif start is not None and end is not None and len(data) > end - start:
            data = memoryview(data)[start:end]
        return data

    async def get(self, key: str, stats: IOStats | None = None) -> bytes | memoryview | None:
        """The whole object; None when it does not exist."""
        try:
            return await self._get(key, stats)
        except FileNotFoundError:
            return None

    async def get_suffix(
        self, key: str, nbytes: int, stats: IOStats | None = None
    ) -> bytes | memoryview | None:
        """The last ``nbytes`` of the object; None when it does not exist."""
        try:
            return await self._get(key, stats, suffix=nbytes)
        except FileNotFoundError:
            return None

    async def get_ranges(
        self,
        key: str,
        ranges: Sequence[tuple[int, int]],
        stats: IOStats | None = None,
        on_part: Callable[[list[int], list[memoryview]], Awaitable[None] | None] | None = None,
    ) -> list[memoryview]:
        """The bytes of ``[start, end)`` ranges of one object, in order, coalesced.

        Args:
            key: the object.
            ranges: byte ranges.
            stats: counters.
            on_part: called with (range indices, their bytes) as each request completes (to
                start decoding before the last request is in).

        Raises:
            StorageAccessError: a request failed for good, or the object is gone (it existed
                when its index was read).
        """
        out: list[memoryview] = [memoryview(b"")] * len(ranges)
        groups = coalesce(ranges, self.options.coalesce_gap, self.options.max_request)

        async def one(gs: int, ge: int, members: list[int]) -> None:
            try:
                data = memoryview(await self._get(key, stats, start=gs, end=ge))
            except FileNotFoundError as exc:
                from ..errors import StorageAccessError

                raise StorageAccessError(
                    f"{self.url(key)}: the object disappeared while it was read (404); "
                    "was the store rewritten? Open it again"
                ) from exc
            parts = [data[ranges[i][0] - gs : ranges[i][1] - gs] for i in members]
            for i, p in zip(members, parts, strict=True):
                out[i] = p
            if on_part is not None:
                res = on_part(members, parts)
                if res is not None:
                    await res

        await asyncio.gather(*(one(*g) for g in groups))
        return out
