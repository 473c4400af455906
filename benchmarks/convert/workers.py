"""The two conversions under test, each run in its own subprocess (``--worker``): ours, naive.

* ours: ``wsi_patchgd.store.convert_many`` exactly as a user calls it;
* naive: ``dask.array.from_array`` over OpenSlide ``read_region``, ``da.to_zarr`` with zstd-3.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._memory import own_rusage
from benchmarks.convert.settings import NAIVE_CHUNK, OURS


def convert_ours(source: str, out: str, workers: int, codec: str = "blosc-lz4") -> dict[str, Any]:
    """Our converter, exactly as a user calls it (``convert --codec CODEC``).

    The clock starts after the imports, as the naive baseline's does (it imports dask, zarr
    and openslide before its clock): our reader libraries, which the converter imports on
    first use, are imported first here too.
    """
    import openslide  # noqa: F401
    import tifffile  # noqa: F401

    from wsi_patchgd.store import ConvertOptions, convert_many, store_name

    t0 = time.perf_counter()
    (res,) = convert_many([source], out, ConvertOptions(codec=codec), workers=workers, quiet=True)
    seconds = time.perf_counter() - t0
    if res.status != "ok":
        raise RuntimeError(f"our conversion of {source} failed: {res.status} {res.reason}")
    return {
        "seconds": seconds,
        "store": str(Path(out) / store_name(source)),
        "megapixels_all_levels": res.megapixels,
        "levels": res.levels,
        "tissue_s": res.timings.get("tissue"),
        "stage_seconds": res.timings,  # plan, lock, create, shards, tissue, finish
    }


class OpenSlideLevel:
    """One OpenSlide level as an array-like for ``dask.array.from_array`` (naive baseline)."""

    def __init__(self, slide: Any, level: int) -> None:
        self.slide = slide
        self.level = level
        self.downsample = slide.level_downsamples[level]
        w, h = slide.level_dimensions[level]
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[:, :, cs]
        loc = (int(x0 * self.downsample), int(y0 * self.downsample))
        img = self.slide.read_region(loc, self.level, (x1 - x0, y1 - y0))
        return np.asarray(img.convert("RGB"))[:, :, cs]


def convert_naive(source: str, out: str, threads: int) -> dict[str, Any]:
    """The straightforward dask + zarr conversion of every OpenSlide level."""
    import dask
    import dask.array as da
    import openslide
    from zarr.codecs import ZstdCodec

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(source)
    n_levels = slide.level_count
    pixels = 0
    with dask.config.set(scheduler="threads", num_workers=threads):
        for level in range(n_levels):
            src = OpenSlideLevel(slide, level)
            arr = da.from_array(src, chunks=(NAIVE_CHUNK, NAIVE_CHUNK, 3))
            da.to_zarr(arr, out, component=str(level), compressors=ZstdCodec(level=3))
            pixels += src.shape[0] * src.shape[1]
    slide.close()
    return {
        "seconds": time.perf_counter() - t0,
        "store": out,
        "megapixels_all_levels": pixels / 1e6,
        "levels": n_levels,
    }


def worker_main(args: argparse.Namespace) -> None:
    """``--worker ours|naive``: run one conversion and write its result JSON."""
    if args.worker in OURS:
        res = convert_ours(args.source, args.out, args.threads, OURS[args.worker])
    else:
        res = convert_naive(args.source, args.out, args.threads)
    res.update(own_rusage())
    Path(args.result).write_text(json.dumps(res))
