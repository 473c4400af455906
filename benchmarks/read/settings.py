"""The read benchmark's name, target and patch size."""

from __future__ import annotations

NAME = "bench_read"
TARGET_SPEEDUP = 3.0  #: ours (batch 64) must read at least this many times OpenSlide's patches/s
PATCH = 256
