"""wsi_patchgd: Patch Gradient Descent on gigapixel whole-slide images in sharded Zarr stores.

``import wsi_patchgd as wp`` gives the public API:

- ``wp.open_slide(url)`` — any slide (SVS, TIFF, the OpenSlide formats, plain images, a store)
  through one reader protocol; ``wp.open_store(url)`` — a converted slide store;
- ``wp.convert(sources, out, ...)`` — slides to sharded Zarr stores (one process or Dask);
- ``wp.train(config)`` — a PatchGD or GD run from a config;
- ``wp.SlideDataset`` — a torch ``Dataset`` of slides with its patch source; ``wp.engine`` —
  PatchGD steps for your own training loop.

Importing the package registers the store's JPEG tile codec with zarr (so any zarr reader in the
process can decode ``--codec jpeg`` stores) and the ``store`` slide reader. Torch is imported
only when a torch-based name is first used.
"""

from typing import TYPE_CHECKING, Any

from .api import convert, open_store, train
from .errors import ConfigError, SlideReadError, StoreError, WsiPatchGDError
from .readers import SlideReader, open_slide
from .store import ConvertOptions, SlideResult, SlideStore  # registers the codec and reader

if TYPE_CHECKING:
    from .data.dataset import SlideBatch, SlideDataset, SlideItem
    from .data.loader import StorePatchSource
    from .training.config import RunConfig, load_config

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConvertOptions",
    "RunConfig",
    "SlideBatch",
    "SlideDataset",
    "SlideItem",
    "SlideReadError",
    "SlideReader",
    "SlideResult",
    "SlideStore",
    "StorePatchSource",
    "StoreError",
    "WsiPatchGDError",
    "convert",
    "load_config",
    "open_slide",
    "open_store",
    "train",
]

_LAZY = {
    "SlideDataset": "data.dataset",
    "SlideItem": "data.dataset",
    "SlideBatch": "data.dataset",
    "StorePatchSource": "data.loader",
    "RunConfig": "training.config",
    "load_config": "training.config",
}


def __getattr__(name: str) -> Any:  # torch-based names: imported on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in ("engine", "models", "training", "datasets", "data"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
