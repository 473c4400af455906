"""A bounded on-disk cache of whole remote shard objects, safe to share between processes.

A remote shard fetched once is kept as a file whose bytes are exactly the object's, so later
reads are local ``os.pread`` calls through the same shard index (epoch 2 onward runs at local
speed). Files are named by a hash of the shard's URL and of the store's attributes, so a store
converted again with other settings does not hit stale entries.

Several processes (DataLoader workers, torchrun ranks, jobs) may share one directory:

* a file appears whole or not at all: it is written to ``tmp/`` and renamed into place;
* least recently used files go first: a hit refreshes the file's mtime (at most every
  :data:`TOUCH_EVERY` seconds per file and process), eviction removes the oldest mtimes until
  the total is under :data:`LOW_WATER` of the limit;
* eviction is tolerant of concurrent readers: a process that has a file open keeps reading it
  after it is unlinked (POSIX), and one that finds it gone fetches the shard again; one
  process evicts at a time (an ``flock``), the others skip that round.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from ..errors import ConfigError

#: eviction brings the total down to this fraction of the limit
LOW_WATER = 0.9
#: a hit refreshes a file's mtime at most this often (seconds) per process
TOUCH_EVERY = 10.0
#: the directory is scanned again (to see other processes' files) after this many writes
RESCAN_EVERY = 64
#: temporary files older than this (seconds) were left by a killed process and are removed
STALE_TMP = 3600.0
SUFFIX = ".shard"
#: cached files a process keeps open (reads of a hot shard cost no open/stat)
MAX_OPEN = 64

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str | int | float, key: str = "data.cache_size") -> int:
    """``"20GB"``, ``"512MiB"``, ``"2e9"`` or a number of bytes -> bytes.

    Raises:
        ConfigError: not a size, or not positive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B)?\s*", str(text), re.IGNORECASE)
        try:
            if not m:
                raise ValueError
            value = float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()]
        except (ValueError, KeyError):
            raise ConfigError(f"{key} = {text!r}: use a size like 20GB or 512MiB") from None
    if not value > 0:
        raise ConfigError(f"{key} = {text!r}: must be more than 0 bytes")
    return int(value)


class CachedFile:
    """An open cached shard file, shared by readers: closed when its last user releases it.

    Attributes:
        fd: the read-only file descriptor (``os.pread`` it).
        size: the file's size in bytes.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._users = 1  # the cache's own reference
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a reference; False if the file was closed already."""
        with self._lock:
            if self._users == 0:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        """Drop a reference (the last one closes the file)."""
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            os.close(self.fd)


class ShardCache:
    """Whole shard objects kept on local disk, at most ``max_bytes`` in all.

    Args:
        directory: where the files are kept (created if missing; may be shared).
        max_bytes: the size limit.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.dir = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        try:
            (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"data.cache_dir = {str(directory)!r}: cannot create it ({exc})"
            ) from exc
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._open: OrderedDict[str, CachedFile] = OrderedDict()
        self._approx: int | None = None
        self._writes = 0

    @staticmethod
    def key(url: str, token: str) -> str:
        """The cache key of the object at ``url`` of a store whose attributes hash to ``token``."""
        return hashlib.sha256(f"{token}\n{url}".encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        """The file a key is kept in."""
        return self.dir / key[:2] / (key + SUFFIX)

    # -- reading -------------------------------------------------------------------------------
    def open(self, key: str) -> CachedFile | None:
        """The cached object of ``key``, open, with a reference for the caller (who calls
        :meth:`CachedFile.release`); None: not cached (or evicted by another process)."""
        now = time.time()
        with self._lock:
            handle = self._open.get(key)
            if handle is not None and handle.acquire():
                self._open.move_to_end(key)
            else:
                handle = None
            stale = now - self._touched.get(key, 0.0) > TOUCH_EVERY
            if stale:
                self._touched[key] = now
        if handle is None:
            try:
                fd = os.open(self.path(key), os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            handle = CachedFile(fd, os.fstat(fd).st_size)
            handle.acquire()
            with self._lock:
                old = self._open.pop(key, None)
                self._open[key] = handle
                drop = [
                    self._open.popitem(last=False)[1] for _ in range(len(self._open) - MAX_OPEN)
                ]
            for h in [old, *drop]:
                if h is not None:
                    h.release()
        elif stale and os.fstat(handle.fd).st_nlink == 0:  # evicted by another process
            handle.release()
            self._forget(key)
            return None
        if stale:
            try:
                os.utime(handle.fd)
            except OSError:  # read-only cache, or a file of another user: LRU only is off
                pass
        return handle

    def _forget(self, key: str) -> None:
        with self._lock:
            handle = self._open.pop(key, None)
        if handle is not None:
            handle.release()

    def discard(self, key: str) -> None:
        """Remove a cached object (found damaged)."""
        self._forget(key)
        try:
            self.path(key).unlink()
        except OSError:
            pass

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | memoryview) -> int:
        """Keep ``data`` under ``key`` (atomically); then evict if over the limit.

        Returns:
            Files evicted (0 when none, or when ``data`` alone exceeds the limit and is not
            kept, or when the disk refused the write: the cache is best effort).
        """
        size = len(data)
        if size > self.max_bytes:
            return 0
        final = self.path(key)
        tmp = self.dir / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            final.parent.mkdir(exist_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(data)
            os.replace(tmp, final)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            return 0
        with self._lock:
            self._touched[key] = time.time()
            self._writes += 1
            if self._approx is not None:
                self._approx += size
            due = (
                self._approx is None
                or self._approx > self.max_bytes
                or self._writes >= RESCAN_EVERY
            )
        return self.evict() if due else 0

    # -- size ----------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for sub in os.scandir(self.dir):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            try:
                with os.scandir(sub.path) as it:
                    for e in it:
                        if e.name.endswith(SUFFIX):
                            try:
                                st = e.stat()
                            except FileNotFoundError:  # evicted by another process just now
                                continue
                            out.append((st.st_mtime, st.st_size, Path(e.path)))
            except FileNotFoundError:
                continue
        return out

    def size(self) -> int:
        """Bytes in the cache now (all processes' files)."""
        return sum(s for _, s, _ in self._entries())

    def evict(self) -> int:
        """Remove least recently used files until the total is under :data:`LOW_WATER` of the
        limit; returns how many were removed (0 also when another process is evicting)."""
        lock_fd = os.open(self.dir / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                import fcntl

                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            except ImportError:  # pragma: no cover - not POSIX: one process per cache dir
                pass
            entries = self._entries()
            total = sum(s for _, s, _ in entries)
            removed = 0
            if total > self.max_bytes:
                goal = LOW_WATER * self.max_bytes
                for _, size, path in sorted(entries, key=lambda e: e[0]):
                    if total <= goal:
                        break
                    try:
                        path.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
                    total -= size
            self._sweep_tmp()
            with self._lock:
                self._approx = total
                self._writes = 0
            return removed
        finally:
            os.close(lock_fd)

    def _sweep_tmp(self) -> None:
        now = time.time()
        with os.scandir(self.dir / "tmp") as it:
            for e in it:
                try:
                    if now - e.stat().st_mtime > STALE_TMP:
                        os.unlink(e.path)
                except FileNotFoundError:
                    pass


_CACHES: dict[tuple[str, int], ShardCache] = {}
_CACHES_LOCK = threading.Lock()


def shard_cache(directory: str | os.PathLike[str], size: str | int) -> ShardCache:
    """The process's :class:`ShardCache` for a directory and size limit (one per pair).

    Args:
        directory: the cache directory (``data.cache_dir``).
        size: its limit, bytes or a size string (``data.cache_size``, e.g. ``"20GB"``).

    Raises:
        ConfigError: the size is not a size, or the directory cannot be created.
    """
    limit = parse_size(size)
    key = (str(Path(directory).expanduser().absolute()), limit)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = ShardCache(key[0], limit)
        return _CACHES[key]
