"""Slide stores: the Zarr v3 layout, conversion (one slide or a Dask batch), and reading."""

from .batch import convert_many, dask_client, expand_sources, write_report
from .convert import (
    ConvertOptions,
    SlideResult,
    convert_slide,
    create_store,
    downsample2x,
    plan_levels,
    store_metadata,
    store_name,
)
from .format import ATTR_KEY, CODECS, FORMAT_VERSION
from .jpeg import JpegTileCodec  # importing it registers the codec with zarr
from .slide_store import SlideStore

__all__ = [
    "ATTR_KEY",
    "CODECS",
    "FORMAT_VERSION",
    "JpegTileCodec",
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
