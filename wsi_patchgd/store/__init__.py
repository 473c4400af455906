"""Slide stores: the Zarr v3 layout, conversion (one slide or a Dask batch), and reading.

Importing this package registers the ``jpeg`` tile codec with zarr and the ``store`` reader
with :func:`wsi_patchgd.readers.open_slide`.
"""

from .batch import convert_many, dask_client, expand_sources, write_report
from .convert import SlideResult, convert_slide, store_name
from .format import ATTR_KEY, CODECS, FORMAT_VERSION
from .jpeg import JpegTileCodec  # importing it registers the codec with zarr
from .lifecycle import create_store, store_metadata
from .meta import LevelMeta, SourceMeta, StoreMeta, TissueMeta
from .plan import ConvertOptions, plan_levels
from .reader import StoreReader, is_store  # importing it registers the "store" reader
from .slide_store import SlideStore
from .tasks import downsample2x
from .verify import verify_store

__all__ = [
    "ATTR_KEY",
    "CODECS",
    "FORMAT_VERSION",
    "JpegTileCodec",
    "LevelMeta",
    "SourceMeta",
    "StoreMeta",
    "StoreReader",
    "TissueMeta",
    "is_store",
    "verify_store",
    "ConvertOptions",
    "SlideResult",
    "SlideStore",
    "convert_many",
    "convert_slide",
    "create_store",
    "plan_levels",
    "store_metadata",
    "dask_client",
    "downsample2x",
    "expand_sources",
    "store_name",
    "write_report",
]
