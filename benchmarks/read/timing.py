"""Patches per second of a reader: batched calls, or one patch per call (optionally pooled)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def time_batched(
    fn: Callable[[np.ndarray, np.ndarray], Any], rows: np.ndarray, cols: np.ndarray, batch: int
) -> float:
    """Patches per second of ``fn(rows, cols)`` called on consecutive batches."""
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        fn(rows[i : i + batch], cols[i : i + batch])
    return len(rows) / (time.perf_counter() - t0)


def time_single(
    fn: Callable[[int, int], Any], rows: np.ndarray, cols: np.ndarray, threads: int = 1
) -> float:
    """Patches per second of ``fn(r, c)`` one patch at a time (optionally from a pool)."""
    if threads == 1:
        t0 = time.perf_counter()
        for r, c in zip(rows, cols, strict=True):
            fn(r, c)
        return len(rows) / (time.perf_counter() - t0)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, rows[:threads], cols[:threads]))  # start the threads
        t0 = time.perf_counter()
        list(pool.map(fn, rows, cols))
        return len(rows) / (time.perf_counter() - t0)
