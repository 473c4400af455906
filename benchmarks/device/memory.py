"""Peak memory of one training step, on CUDA or on the CPU, and what counts as out of memory.

On CUDA the meter reads the caching allocator's statistics: ``max_memory_allocated`` since
``reset_peak_memory_stats`` minus what was allocated before the step. On the CPU it is the rise
of this process's peak RSS (``VmHWM``, reset just before the step via ``/proc/self/clear_refs``)
over its RSS before the step, with glibc's mmap threshold fixed at 128 KiB
(:func:`fix_malloc_threshold`, the in-process form of ``bench_train``'s
``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave RSS at once and one configuration's
freed memory does not hide the next one's. On the CPU the step also runs under an address-space
cap (``RLIMIT_AS``) so that a configuration too large for the machine fails as "OOM" instead of
swapping or meeting the kernel's OOM killer.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from typing import Any

from benchmarks._memory import proc_status_kb
from benchmarks.train.step import peak_rss_bytes, reset_peak_rss, rss_bytes

#: glibc's ``M_MMAP_THRESHOLD`` (``mallopt``) and the threshold ``bench_train`` uses
M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 128 * 1024


def fix_malloc_threshold() -> bool:
    """Fix glibc malloc's mmap threshold at 128 KiB in this process; False if not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (CUDA, torch's CPU allocator, Python)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return any(
        s in text for s in ("out of memory", "can't allocate", "cannot allocate", "alloc_failed")
    )


class PeakMemory:
    """Measures the peak memory of what runs between :meth:`start` and :meth:`stop`.

    Args:
        device: ``"cuda"`` or ``"cpu"``.
        cpu_limit_bytes: On the CPU, the address space the step may add (``RLIMIT_AS``).
    """

    def __init__(self, device: str, cpu_limit_bytes: int) -> None:
        self.cuda = device == "cuda"
        self.cpu_limit = cpu_limit_bytes
        self.before = 0
        self.hwm_reset = True  #: on the CPU, whether the peak-RSS mark could be reset
        self._rlimit: tuple[int, int] | None = None

    @property
    def metric(self) -> str:
        """What :meth:`stop` returns, in words (for the JSON)."""
        if self.cuda:
            return "torch.cuda.max_memory_allocated during the step - allocated before it"
        return (
            "peak RSS (VmHWM, reset right before the step) - RSS before the step, "
            "malloc mmap threshold 128 KiB"
        )

    def start(self) -> None:
        """Collect garbage, note the memory in use, reset the peak (and cap the CPU's)."""
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return
        self.before = rss_bytes()
        self.hwm_reset = reset_peak_rss()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = proc_status_kb("VmSize") * 1024 + self.cpu_limit
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        self._rlimit = (soft, hard)

    def stop(self) -> dict[str, Any]:
        """Lift the CPU cap; the step's peak above the memory in use at :meth:`start`.

        Returns:
            ``peak_bytes`` (the step's), ``abs_peak_bytes`` (the process's or the allocator's)
            and, on CUDA, ``reserved_peak_bytes`` (what the caching allocator held at most).
        """
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return {
                "peak_bytes": peak - self.before,
                "abs_peak_bytes": peak,
                "reserved_peak_bytes": torch.cuda.max_memory_reserved(),
            }
        if self._rlimit is not None:
            resource.setrlimit(resource.RLIMIT_AS, self._rlimit)
            self._rlimit = None
        peak = peak_rss_bytes()
        return {"peak_bytes": peak - self.before, "abs_peak_bytes": peak}


def release(device: str) -> None:
    """Free what the last configuration left: garbage, and CUDA's cached blocks."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
