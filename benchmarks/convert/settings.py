"""The conversion benchmark's name, targets, fixed sizes and the modes of ours it runs."""

from __future__ import annotations

NAME = "bench_convert"
TARGET_SPEEDUP = 5.0
TARGET_RSS_MB = 500.0
NAIVE_CHUNK = 1024
N_CHECK = 20
CHECK_PATCH = 256
#: our two modes: the default lossless re-encode, and --codec jpeg (source JPEG tiles kept)
OURS = {"ours": "blosc-lz4", "ours-jpeg": "jpeg"}
