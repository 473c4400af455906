"""A store's tissue: the mask and the per-patch tissue tables, written after the levels.

:func:`level_fractions` is the one way a level's per-patch tissue fractions come from a mask
stored at another downsample (the conversion stores them for the store's patch size; the data
loader computes them for any other patch size); :func:`write_tissue` writes the mask and the
tables of every level of a converted store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ..io import StorageOptions, zarr_store
from ..readers import SlideReader
from ..tissue import detect_tissue, patch_tissue_fractions, summed_area_table
from .lifecycle import remove_prefix
from .plan import ConvertOptions, LevelPlan
from .tasks import downsample2x


def level_fractions(
    mask: np.ndarray,
    mask_downsample: float,
    level_downsample: float,
    patch_size: int,
    level_shape: tuple[int, int],
    sat: np.ndarray | None = None,
) -> np.ndarray:
    """Tissue fraction of every patch of a level's patch grid, from a mask at another scale.

    Args:
        mask: 2-D boolean tissue mask.
        mask_downsample: the mask's downsample relative to level 0.
        level_downsample: the level's downsample relative to level 0.
        patch_size: patch side in level pixels.
        level_shape: ``(height, width)`` of the level in pixels (the grid's last row and
            column cover its edge).
        sat: :func:`~wsi_patchgd.tissue.summed_area_table` of ``mask``, if already computed.

    Returns:
        ``float32`` array of ``ceil(height / P) x ceil(width / P)`` fractions in ``[0, 1]``.
    """
    h, w = level_shape
    grid = ((h + patch_size - 1) // patch_size, (w + patch_size - 1) // patch_size)
    scale = level_downsample / mask_downsample  # mask pixels per pixel of this level
    return patch_tissue_fractions(mask, scale, patch_size, grid, sat)


#: the mask level is never chosen coarser than this (longer side, px) for the patch grid's sake:
#: detection's parameters (areas as fractions of the image, a 2 px closing) want a thumbnail
MASK_MIN_SIZE = 256


def mask_plan(plans: list[LevelPlan], options: ConvertOptions) -> LevelPlan:
    """The level the tissue mask is computed on.

    Of the levels whose longer side is <= ``options.mask_max_size`` (else the coarsest level),
    the coarsest that still has ``options.mask_patch_pixels`` mask pixels along a level-0
    patch side and a longer side of at least :data:`MASK_MIN_SIZE`; where none has, the finest
    of them.
    """
    fit = [pl for pl in plans if max(pl.height, pl.width) <= options.mask_max_size]
    fit = fit or [plans[-1]]
    enough = [
        pl
        for pl in fit
        if options.patch_size / pl.downsample >= options.mask_patch_pixels
        and max(pl.height, pl.width) >= MASK_MIN_SIZE
    ]
    return enough[-1] if enough else fit[0]


#: early_mask reads a source level of at most this many times ``mask_max_size ** 2`` pixels
EARLY_MAX_AREA = 4


def early_mask(
    reader: SlideReader, plans: list[LevelPlan], options: ConvertOptions
) -> np.ndarray | None:
    """The tissue mask computed from the source itself, so the conversion can detect tissue
    while it writes the levels: the mask level is a copy of one of the source's levels, or the
    store computes it from one by 2x2 means (:func:`~wsi_patchgd.store.tasks.downsample2x`,
    applied here the same way: the same pixels the store will hold). None when that source
    level has more than :data:`EARLY_MAX_AREA` x ``mask_max_size ** 2`` pixels (the mask
    level is then read back once written)."""
    target = mask_plan(plans, options)
    by_index = {pl.index: pl for pl in plans}
    pl, steps = target, 0
    while pl.origin.startswith("downsample:"):
        pl, steps = by_index[int(pl.origin.split(":")[1])], steps + 1
    if pl.width * pl.height > EARLY_MAX_AREA * options.mask_max_size**2:
        return None
    img = reader.read_region(int(pl.origin.split(":")[1]), 0, 0, pl.width, pl.height)
    for _ in range(steps):  # (h, w, 3) viewed as the (3, h, w) the store's means work on
        img = downsample2x(img.transpose(2, 0, 1)).transpose(1, 2, 0)
    return detect_tissue(np.ascontiguousarray(img), options.tissue)


def write_tissue(
    url: str,
    storage_options: StorageOptions | None,
    plans: list[LevelPlan],
    options: ConvertOptions,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Detect tissue on a written level and store the mask and every level's patch table.

    The mask is computed on the level :func:`mask_plan` names (``tissue/mask``), unless
    ``mask`` (from :func:`early_mask`) is given; ``tissue/fraction/<level>`` holds the
    fractions of each level's patches. Whatever a killed run left under ``tissue`` is deleted
    first.

    Returns:
        The ``tissue`` entry of the store's attributes.
    """
    remove_prefix(url, storage_options, "tissue")  # whatever a killed run left, torn or not
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="r+")
    lvl = mask_plan(plans, options)
    if mask is None:
        level_array: Any = group[str(lvl.index)]
        mask = detect_tissue(np.asarray(level_array[:]).transpose(1, 2, 0), options.tissue)
    tg = group.create_group("tissue")
    tg.create_array("mask", data=mask.astype(bool), chunks=mask.shape, overwrite=True)
    fr = tg.create_group("fraction")
    sat = summed_area_table(mask)  # one for every level
    for pl in plans:
        fractions = level_fractions(
            mask, lvl.downsample, pl.downsample, options.patch_size, (pl.height, pl.width), sat
        )
        fr.create_array(str(pl.index), data=fractions.astype(np.float32), overwrite=True)
    return {
        "params": options.tissue.to_dict(),
        "mask_level": lvl.index,
        "mask_downsample": lvl.downsample,
        "fraction": float(mask.mean()),
    }
