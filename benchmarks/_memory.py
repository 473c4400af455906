"""Peak memory: a child process tree's RSS sampled while it runs, and this process's own peak."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, remove


class RssSampler:
    """Samples the RSS of a child's process tree in a thread while it runs; keeps the peak.

    Use as a context manager around ``proc.wait()``. ``kill_if(rss)`` (optional, called with
    every sample) returns a reason to kill the child, kept in :attr:`killed`, or ``""``.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        interval: float,
        kill_if: Callable[[int], str] | None = None,
    ) -> None:
        self.proc, self.interval, self.kill_if = proc, interval, kill_if
        self.peak = 0  #: largest sampled RSS of the tree, bytes
        self.killed = ""  #: why ``kill_if`` killed the child, or ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            why = self.kill_if(rss) if self.kill_if else ""
            if why:
                self.killed = why
                self.proc.kill()
                return
            self._stop.wait(self.interval)


def run_measured(cmd: list[str], result_json: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd``, sampling the RSS of its whole process tree every 0.1 s.

    The child writes its own result (a JSON object) to ``result_json``; it should include
    ``maxrss_self_mb`` (``getrusage(RUSAGE_SELF).ru_maxrss``) and ``maxrss_children_mb``.

    Returns:
        The child's result plus ``wall_s`` (the child's lifetime as seen from here),
        ``peak_rss_tree_mb`` (largest sampled sum of RSS over the tree) and ``peak_rss_mb``
        (the larger of that and the child's own high-water mark ``maxrss_self_mb``, since
        sampling can miss a short spike).
    """
    remove(result_json)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    with RssSampler(proc, 0.1) as sampler:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with status {rc}")
    res = json.loads(result_json.read_text())
    res["wall_s"] = wall
    res["peak_rss_tree_mb"] = sampler.peak / 1e6
    res["peak_rss_mb"] = max(sampler.peak / 1e6, res.get("maxrss_self_mb", 0.0))
    return res


def proc_status_kb(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmSize`` ...), Linux only.

    Raises:
        KeyError: the field is not there.
        OSError: there is no ``/proc`` (not Linux).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def own_rusage() -> dict[str, float]:
    """This process's peak RSS in MB, for :func:`run_measured`.

    ``maxrss_self_mb`` is the peak of this process image only: ``VmHWM`` from
    ``/proc/self/status`` on Linux. ``getrusage(RUSAGE_SELF).ru_maxrss`` is NOT used for that
    on Linux because it survives ``fork`` + ``exec``: a child started by a 600 MB parent reports
    at least 600 MB. It is kept as ``ru_maxrss_mb`` for reference.
    """
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6
    try:
        hwm: float | None = proc_status_kb("VmHWM") * 1024 / 1e6
    except (OSError, KeyError):
        hwm = None
    return {
        "maxrss_self_mb": hwm if hwm is not None else ru,
        "ru_maxrss_mb": ru,
        "maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 1e6,
    }
