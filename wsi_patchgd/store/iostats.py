"""Counters of what reading stores cost: cache hits and misses, requests and bytes fetched.

One :class:`IOStats` is shared by everything that reads for one consumer (a
:class:`~wsi_patchgd.data.StorePatchSource` and the stores it opened), from any thread;
:meth:`IOStats.take` returns the counts since its last call and starts them again from zero
(the trainer writes them per epoch).
"""

from __future__ import annotations

import threading

#: every counter, in the order :meth:`IOStats.take` returns them
COUNTERS = (
    "patches_read",  # chunks read through the fast chunk reader (local and remote)
    "cache_hits",  # remote chunks served from the local shard cache
    "cache_misses",  # remote chunks whose shard was not in the cache (fetched)
    "requests",  # requests sent to the object store (retries included)
    "bytes_fetched",  # bytes received from the object store
    "retries",  # requests sent again after a transient error
    "cache_bytes_written",  # bytes written into the shard cache
    "cache_evictions",  # shard files removed from the cache to keep it under its size
)


class IOStats:
    """Thread-safe counters (see :data:`COUNTERS`) and the seconds spent waiting for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._fetch_s = 0.0

    def add(self, **counts: int) -> None:
        """Add to some counters (``requests=1, bytes_fetched=n``)."""
        with self._lock:
            for k, v in counts.items():
                self._counts[k] += v

    def add_fetch_time(self, seconds: float) -> None:
        """Add wall-clock seconds a reader waited for the object store."""
        with self._lock:
            self._fetch_s += seconds

    def peek(self) -> dict[str, int | float]:
        """The counts so far, without resetting them."""
        with self._lock:
            return {**self._counts, "fetch_wait_s": round(self._fetch_s, 6)}

    def take(self) -> dict[str, int | float]:
        """The counts since the last call (``fetch_wait_s`` too), then reset to zero."""
        with self._lock:
            out: dict[str, int | float] = {**self._counts, "fetch_wait_s": round(self._fetch_s, 6)}
            self._counts = dict.fromkeys(COUNTERS, 0)
            self._fetch_s = 0.0
        return out
