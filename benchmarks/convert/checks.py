"""Checks of a conversion against OpenSlide, and estimates made before a long naive run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.convert.settings import CHECK_PATCH, N_CHECK, NAIVE_CHUNK


def check_patches(source: Path, size: int, read: Any, seed: int) -> tuple[float, int]:
    """Max |difference| of ``read(x, y)`` (256^2 RGB) vs OpenSlide over N_CHECK random patches.

    Half the patches lie on the patch grid, half at arbitrary offsets (across chunk edges).
    Returns (max difference, number of patches holding tissue-like pixels).
    """
    import openslide

    rng = np.random.default_rng(seed)
    p = CHECK_PATCH
    worst = 0.0
    tissue = 0
    with openslide.OpenSlide(str(source)) as slide:
        for i in range(N_CHECK):
            if i % 2 == 0:
                x = int(rng.integers(0, size // p)) * p
                y = int(rng.integers(0, size // p)) * p
            else:
                x, y = (int(v) for v in rng.integers(0, size - p, 2))
            ref = np.asarray(slide.read_region((x, y), 0, (p, p)).convert("RGB"))
            got = read(x, y)
            worst = max(worst, float(np.abs(ref.astype(np.int16) - got.astype(np.int16)).max()))
            tissue += int((ref.min(axis=2) < 200).mean() > 0.1)
    return worst, tissue


def ours_reader(store: str) -> Any:
    """``read(x, y)``: a 256^2 level-0 region of our store, for :func:`check_patches`."""
    from wsi_patchgd.store import SlideStore

    s = SlideStore(store)
    return lambda x, y: s.read_region(0, x, y, CHECK_PATCH, CHECK_PATCH)


def naive_reader(store: str) -> Any:
    """``read(x, y)``: a 256^2 region of the naive store's level 0, for :func:`check_patches`."""
    import zarr

    z = zarr.open_array(store, path="0", mode="r")
    return lambda x, y: np.asarray(z[y : y + CHECK_PATCH, x : x + CHECK_PATCH, :])


def source_pixels(source: Path) -> tuple[int, int, list[tuple[int, int]]]:
    """Level-0 width and height of a slide and the (width, height) of all its levels."""
    import openslide

    with openslide.OpenSlide(str(source)) as s:
        dims = list(s.level_dimensions)
    w, h = dims[0]
    return w, h, dims


def probe_naive_rate(source: Path, threads: int) -> float:
    """A quick estimate of the naive MP/s: time a few 1024^2 read_region + zstd-3 encodes."""
    import openslide
    from numcodecs import Zstd

    codec = Zstd(level=3)
    with openslide.OpenSlide(str(source)) as slide:
        w, h = slide.dimensions
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        n = 4
        for _ in range(n):
            x = int(rng.integers(0, max(1, w - NAIVE_CHUNK)))
            y = int(rng.integers(0, max(1, h - NAIVE_CHUNK)))
            a = np.asarray(slide.read_region((x, y), 0, (NAIVE_CHUNK, NAIVE_CHUNK)).convert("RGB"))
            codec.encode(np.ascontiguousarray(a))
        dt = time.perf_counter() - t0
    return n * NAIVE_CHUNK * NAIVE_CHUNK / 1e6 / dt * threads  # optimistic: perfect scaling
