"""The conversion benchmark's name, targets, fixed sizes and the modes of ours it runs."""

from __future__ import annotations

NAME = "bench_convert"
TARGET_SPEEDUP = 5.0
#: the speed-up targets of the speed issue, where they are stricter than TARGET_SPEEDUP
TARGETS = {("ours", 32768): 10.0, ("ours-jpeg", 8192): 15.0}


def target_speedup(impl: str, size: int) -> float:
    """The level-0 speed-up over naive that ``impl`` must reach at ``size``."""
    return TARGETS.get((impl, size), TARGET_SPEEDUP)


TARGET_RSS_MB = 500.0
NAIVE_CHUNK = 1024
N_CHECK = 20
CHECK_PATCH = 256
#: our two modes: the default lossless re-encode, and --codec jpeg (source JPEG tiles kept)
OURS = {"ours": "blosc-lz4", "ours-jpeg": "jpeg"}
