"""A slide store seen as a slide reader (``info``, thumbnails, re-tiling), registered as ``store``.

Importing this module registers the reader with :func:`wsi_patchgd.readers.register_reader`,
so that ``open_slide(url)`` opens a store directory and ``open_slide(url, reader="store")``
asks for one (``import wsi_patchgd.store`` imports it).
"""

from __future__ import annotations

import numpy as np

from ..io import StorageOptions, filesystem
from ..readers import Level, SlideReader, register_reader
from .format import REBUILD_SUFFIX
from .slide_store import SlideStore


class StoreReader(SlideReader):
    """A complete slide store seen through the reader protocol.

    Args:
        url: local path or URL of the store.
        storage_options: fsspec options for remote URLs.

    Raises:
        StoreError: see :class:`~wsi_patchgd.store.SlideStore` (incomplete, not a store ...).
    """

    name = "store"

    def __init__(self, url: str, storage_options: StorageOptions | None = None) -> None:
        self.source = str(url)
        self.store = SlideStore(self.source, storage_options)
        m = self.store.meta
        self.format = "wsi_patchgd-zarr"
        self.vendor = m.vendor
        self.mpp = self.store.mpp
        self.objective_power = m.objective_power or None
        self.levels = tuple(Level(lv.width, lv.height, lv.downsample) for lv in m.levels)
        self.properties = {
            "store.patch_size": m.patch_size,
            "store.codec": m.codec,
            "store.source": m.source.name,
            "store.tissue_fraction": m.tissue.fraction,
        }

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self.store.read_region(level, x, y, width, height)


def is_store(url: str, storage_options: StorageOptions | None = None) -> bool:
    """Whether a directory holds a Zarr store (or one being rebuilt beside it): one lookup or two.

    A directory that holds ``zarr.json`` is claimed even if it is not a wsi_patchgd store or
    not complete, so that opening it reports what it lacks.
    """
    fs, path = filesystem(url, storage_options)
    root = path.rstrip("/")
    try:
        return bool(
            fs.exists(root + "/zarr.json") or fs.exists(root + REBUILD_SUFFIX + "/zarr.json")
        )
    except OSError:
        return False


register_reader("store", StoreReader, is_store)
