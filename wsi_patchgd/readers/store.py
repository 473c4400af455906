"""An existing wsi_patchgd store opened as a slide (for ``info``, thumbnails, re-tiling)."""

from __future__ import annotations

import numpy as np

from ..io import StorageOptions
from .base import Level, SlideReader


class StoreReader(SlideReader):
    """A complete slide store seen through the reader protocol."""

    name = "store"

    def __init__(self, url: str, storage_options: StorageOptions | None = None) -> None:
        from ..store.slide_store import SlideStore  # here: the store package imports readers

        self.source = str(url)
        self.store = SlideStore(self.source, storage_options)
        m = self.store.meta
        self.format = "wsi_patchgd-zarr"
        self.vendor = str(m.get("vendor", "unknown"))
        self.mpp = self.store.mpp
        op = m.get("objective_power")
        self.objective_power = float(op) if op else None
        self.levels = tuple(
            Level(
                self.store.level_shape(i)[1],
                self.store.level_shape(i)[0],
                self.store.downsample(i),
            )
            for i in range(self.store.n_levels)
        )
        self.properties = {
            "store.patch_size": self.store.patch_size,
            "store.codec": m.get("codec"),
            "store.source": m.get("source", {}).get("name"),
            "store.tissue_fraction": m.get("tissue", {}).get("fraction"),
        }

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        chw = self.store.read_region(level, x, y, width, height)
        return np.ascontiguousarray(chw.transpose(1, 2, 0))
