"""The stores the read benchmark reads (reused from the work folder, else built); patch cells."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import dir_size_mb, log


def find_or_build_store(slide: Path, workdir: Path, codec: str = "blosc-lz4") -> tuple[str, bool]:
    """A complete store of ``slide`` (``--codec codec``): reused if one exists in the work
    folder, else built.

    Returns (store path, whether this run built it).
    """
    from wsi_patchgd.errors import WsiPatchGDError
    from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many, store_name

    name = store_name(str(slide))
    dirs = (
        (workdir / "read", workdir / "convert" / "ours")
        if codec == "blosc-lz4"
        else (workdir / f"read-{codec}",)
    )
    for d in dirs:
        cand = d / name
        if cand.exists():
            try:
                SlideStore(str(cand))
            except WsiPatchGDError:
                continue
            log(f"store: reusing {cand}")
            return str(cand), False
    out = dirs[0]
    log(f"store: converting {slide.name} into {out} (--codec {codec}) ...")
    t0 = time.perf_counter()
    (res,) = convert_many(
        [str(slide)], str(out), ConvertOptions(codec=codec), workers=2, quiet=True
    )
    if res.status != "ok":
        raise SystemExit(f"conversion failed: {res.reason}")
    log(f"store: built in {time.perf_counter() - t0:.1f} s ({dir_size_mb(out / name):,.0f} MB)")
    return str(out / name), True


def tissue_positions(store: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (row, col) cells of level 0 that are mostly tissue (distinct if possible)."""
    frac = store.patch_fractions(0)
    cells = np.argwhere(frac >= 0.5)
    if len(cells) == 0:
        cells = np.argwhere(np.ones_like(frac, dtype=bool))
    idx = rng.choice(len(cells), size=n, replace=n > len(cells))
    return cells[idx, 0], cells[idx, 1]
