"""Writing an in-memory RGB image (an UltraMNIST canvas) as a complete slide store.

Canvases are written straight into stores with the layout of :mod:`wsi_patchgd.store.format`
(pyramid levels by the same 2x2 mean as conversion), with no PNG in between and no tissue
detection: the mask is all true and every patch's tissue fraction is 1
(``meta["tissue"]["method"] == "all"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ...errors import ConfigError
from ...io import zarr_store
from ...readers.base import Level, SlideReader
from ...store import ConvertOptions, create_store, downsample2x, plan_levels, store_metadata
from ...store.chunk_reader import supports
from ...store.format import ATTR_KEY
from ...store.shard_writer import ShardWriter
from ...store.tissue_tables import mask_plan


class _ArrayReader(SlideReader):
    """An in-memory RGB image seen through the reader protocol (to plan a store's levels)."""

    name = "ultramnist"

    def __init__(self, name: str, rgb: np.ndarray) -> None:
        self.source = name
        self.format = "ultramnist"
        self.vendor = "ultramnist"
        self._rgb = rgb
        self.levels = (Level(rgb.shape[1], rgb.shape[0], 1.0),)
        self.properties = {}

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._rgb[y : y + height, x : x + width]


def _write_level(dest: str, index: int, chw: np.ndarray, shard: int) -> None:
    """Write a whole level: shard by shard with the store's shard writer when it handles the
    layout (much faster than zarr, which encodes chunk by chunk), else through zarr."""
    arr: Any = zarr.open_array(zarr_store(dest), path=str(index), mode="r+")
    meta = arr.metadata.to_dict()
    if not supports(meta):
        arr[:] = chw
        return
    writer = ShardWriter(f"{dest.rstrip('/')}/{index}", meta)
    _, h, w = chw.shape
    for sy in range(-(-h // shard)):
        for sx in range(-(-w // shard)):
            block = chw[:, sy * shard : (sy + 1) * shard, sx * shard : (sx + 1) * shard]
            writer.write(np.ascontiguousarray(block), (0, sy, sx))


def write_image_store(
    dest: str,
    rgb: np.ndarray,
    *,
    name: str,
    patch_size: int = 256,
    source: dict[str, Any] | None = None,
    options: ConvertOptions | None = None,
) -> None:
    """Write an in-memory RGB image as a complete store in which every patch is usable.

    The store has the layout :func:`~wsi_patchgd.store.convert_slide` writes (same levels,
    chunks, shards, codec and attributes; coarser levels by the same 2x2 mean), but no tissue
    detection: the mask is all true and every patch's tissue fraction is 1 (partial edge
    patches: the part inside the image). An existing store at ``dest`` is replaced.

    Args:
        dest: store path or URL (remote storage options come from the environment).
        rgb: (H, W, 3) uint8 image.
        name: image name (the store's ``source.name``).
        patch_size: chunk side = training patch size.
        source: extra keys recorded under ``source`` (how the image was made).
        options: conversion options (``patch_size`` then comes from them).

    Raises:
        ConfigError: ``rgb`` is not an RGB uint8 image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConfigError(f"{dest}: image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    options = options or ConvertOptions(patch_size=patch_size)
    reader = _ArrayReader(name, rgb)
    plans = plan_levels(reader, options)
    identity: dict[str, Any] = {"name": name, "url": f"generated:{name}", "size": 0, "mtime": None}
    identity.update(source or {})
    create_store(dest, None, reader, plans, options, identity)
    group = zarr.open_group(zarr_store(dest), mode="r+")
    level = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    for pl in plans:
        if pl.index > 0:
            level = downsample2x(level)[:, : pl.height, : pl.width]
        _write_level(dest, pl.index, level, options.shard_size)
    mask_level = mask_plan(plans, options)
    mask = np.ones((mask_level.height, mask_level.width), bool)
    tg = group.create_group("tissue", overwrite=True)
    tg.create_array("mask", data=mask, chunks=mask.shape, overwrite=True)
    fr = tg.create_group("fraction")
    p = options.patch_size
    for pl in plans:
        # the part of every patch inside the image (what patch_tissue_fractions gives for an
        # all-true mask): 1 except in a partial last row / column
        rows = np.minimum(p, pl.height - p * np.arange(-(-pl.height // p))) / p
        cols = np.minimum(p, pl.width - p * np.arange(-(-pl.width // p))) / p
        fractions = np.outer(rows, cols).astype(np.float32)
        fr.create_array(str(pl.index), data=fractions, overwrite=True)
    tissue = {
        "method": "all",
        "note": "generated image: no tissue detection, every patch is usable",
        "mask_level": mask_level.index,
        "mask_downsample": mask_level.downsample,
        "fraction": 1.0,
    }
    group.attrs[ATTR_KEY] = store_metadata(
        reader, plans, options, identity, complete=True, tissue=tissue
    )
