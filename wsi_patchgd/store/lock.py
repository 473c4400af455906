"""One conversion per store: the lock object ``<store>.lock`` beside it, on disk or S3.

A conversion holds :class:`StoreLock` from before it looks at the store until after its last
write; a second job waits, then reports the slide skipped. A lock whose holder is gone (its
process on this machine has exited, or its heartbeat is too old) is taken over, and a holder
that lost its lock stops before its next irreversible step (:class:`StoreLocked`).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..errors import StoreError
from ..io import StorageOptions, filesystem, is_remote
from .format import LOCK_SUFFIX


class StoreLocked(StoreError):
    """Another job holds the store's lock (or took it over from this one)."""


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This machine, boot and PID namespace, as a lock records them: a process id means
    something only within all three (host names alone can repeat across cloned machines)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_lock(raw: bytes) -> dict[str, Any]:
    try:
        h = json.loads(raw)
    except ValueError:
        return {}
    return h if isinstance(h, dict) else {}


class StoreLock:
    """At most one conversion per store: an object ``<store>.lock`` beside it, created only if
    absent.

    Local paths: ``os.open(O_CREAT | O_EXCL)``. Object storage: a conditional put
    (``If-None-Match: *``, which S3, MinIO and moto honour; s3fs ``mode="create"``), then read
    back (the owner id must be ours: a store whose create-if-absent is not atomic gets a best
    effort). The holder renews a heartbeat every ``stale_after / 4`` s from a thread (locally the
    file's mtime, remotely the recorded time, a put conditional on the lock's ETag on S3). A lock
    is stale when its heartbeat is older than ``stale_after`` s or when its process, on this
    machine and PID namespace, has exited (a killed job); a stale lock is taken over so that only
    one of several jobs doing so wins (S3: a put conditional on the stale object's ETag; local:
    under ``flock`` of the stale file, re-checked to be the same file, then replaced). A holder
    that finds the lock no longer its own stops before its next irreversible step
    (:meth:`check`).
    """

    def __init__(
        self,
        store_url: str,
        storage_options: StorageOptions | None = None,
        stale_after: float = 120,
    ) -> None:
        self.url = store_url.rstrip("/") + LOCK_SUFFIX
        self.fs, self.path = filesystem(self.url, storage_options)
        self.remote = is_remote(self.url)
        self.s3 = self.url.split("://", 1)[0] in ("s3", "s3a")
        self.stale_after = float(stale_after)
        self.owner = uuid.uuid4().hex
        self.since = time.time()
        self.holder: dict[str, Any] | None = None  # the other job's, after a failed acquire
        self.lost = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lock object -------------------------------------------------------------------
    def _content(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": host_id(),
                "pid": os.getpid(),
                "since": self.since,
                "heartbeat": time.time(),
            }
        ).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(holder, ETag) of the lock there now, (None, None) when there is none."""
        if not self.remote:
            try:
                with open(self.path, "rb") as fh:
                    raw = fh.read()
                    mtime = os.fstat(fh.fileno()).st_mtime
            except FileNotFoundError:
                return None, None
            return {**_parse_lock(raw), "heartbeat": mtime}, None
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)  # the ETag first: the content is then as new or newer
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        h = _parse_lock(raw)
        if not isinstance(h.get("heartbeat"), (int, float)):
            lm = info.get("LastModified")
            h["heartbeat"] = lm.timestamp() if hasattr(lm, "timestamp") else 0.0
        return h, info.get("ETag")

    def _stale(self, h: dict[str, Any]) -> bool:
        pid = h.get("pid")
        if h.get("host") == host_id() and isinstance(pid, int) and not _pid_alive(pid):
            return True
        return time.time() - float(h.get("heartbeat") or 0.0) > self.stale_after

    def _create(self) -> bool:
        data = self._content()
        if not self.remote:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return self._confirm()

    def _confirm(self) -> bool:
        """Read the lock back: is it ours? (and remember its ETag)."""
        h, tag = self._read()
        if h is None or h.get("owner") != self.owner:
            return False
        self._etag = tag
        return True

    def _take_over(self, tag: str | None) -> bool:
        """Replace the stale lock there by ours; False when another job was faster."""
        if not self.remote:
            return self._take_over_local()
        if self.s3 and tag:
            try:
                self.fs.pipe_file(self.path, self._content(), IfMatch=tag)
            except OSError:  # precondition failed (another job took it), or gone
                return False
            return self._confirm()
        try:  # other object stores: best effort
            self.fs.rm(self.path)
        except FileNotFoundError:
            pass
        return self._create()

    def _take_over_local(self) -> bool:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another job is taking it over
            st = os.fstat(fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                return False
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                return False  # replaced meanwhile
            if not self._stale({**_parse_lock(os.read(fd, 1 << 16)), "heartbeat": st.st_mtime}):
                return False
            os.unlink(self.path)
        finally:
            os.close(fd)
        return self._create()

    # -- the protocol ----------------------------------------------------------------------
    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait`` s for another job; False if it still holds it
        (its lock is then in :attr:`holder`)."""
        deadline = time.monotonic() + max(0.0, wait)
        vanished = 0
        while True:
            if self._create():
                break
            h, tag = self._read()
            if h is None:  # released just now: try again at once (but not forever)
                vanished += 1
                if vanished > 100:
                    raise StoreError(f"{self.url}: cannot create this lock file; check the path")
                time.sleep(0.01)
                continue
            if self._stale(h) and self._take_over(tag):
                break
            if time.monotonic() >= deadline:
                self.holder = h
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock {self.url}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.stale_after / 4)):
            try:
                if not self._refresh():
                    self.lost = True
                    return
            except Exception:  # a transient storage error: the next beat tries again
                continue

    def _refresh(self) -> bool:
        """Renew the heartbeat; False when the lock is no longer ours."""
        if self.remote and self.s3 and self._etag:
            try:
                out = self.fs.pipe_file(self.path, self._content(), IfMatch=self._etag)
            except OSError:
                return self._confirm()  # a transient error, or it is no longer ours
            tag = out.get("ETag") if isinstance(out, dict) else None
            if tag:
                self._etag = tag
                return True
            return self._confirm()
        h, _ = self._read()
        if h is None or h.get("owner") != self.owner:
            return False
        if self.remote:
            self.fs.pipe_file(self.path, self._content())
        else:
            os.utime(self.path)
        return True

    def check(self) -> None:
        """Raise :class:`StoreLocked` unless this job still holds the lock (called before each
        irreversible step)."""
        h, _ = self._read()
        if self.lost or h is None or h.get("owner") != self.owner:
            self.lost = True
            raise StoreLocked(
                f"{self.url}: this job lost the store's lock to another job (its heartbeat was "
                f"over {self.stale_after:g} s old); rerun it when the other job has finished"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            h, _ = self._read()
            if h is not None and h.get("owner") == self.owner:
                if self.remote:
                    self.fs.rm(self.path)
                else:
                    os.unlink(self.path)
        except OSError:
            pass  # not fatal: a lock we cannot delete is taken over once stale (lock_stale_after)

    def busy_reason(self) -> str:
        """The report's reason for a store another job holds."""
        h = self.holder or {}
        since = h.get("since")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            if isinstance(since, (int, float))
            else "?"
        )
        host = str(h.get("host", "?")).split("/", 1)[0]
        return (
            f"locked by another job (pid {h.get('pid', '?')} on {host}, since {when}; "
            f"lock {self.url})"
        )
