"""Tissue-rich RGB tiles cut from a real slide, to texture synthetic slides with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import ConfigError, SlideReadError
from .arrays import F32, is_int, to_uint8


def texture_tiles_from_slide(
    path: str | os.PathLike[str], n: int, tile: int = 256, seed: int = 0
) -> list[np.ndarray]:
    """Extract ``n`` tissue-rich RGB tiles from level 0 of a real slide.

    Windows on a grid of stride ``tile // 4`` are scored on a thumbnail (at most 2048 px) by
    their fraction of tissue pixels (saturation above 0.08 and neither white nor black); among
    the windows that are at least 90 % tissue (75 %, then 60 %, if too few are), ``n`` are
    drawn at random, preferring windows that do not overlap, and read at full resolution.

    Args:
        path: A slide OpenSlide can open (``.svs``, ``.tif``, ``.ndpi``, ...).
        n: Number of tiles (at least 1).
        tile: Tile side in pixels (at least 16).
        seed: Seed of the random choice.

    Returns:
        ``n`` uint8 RGB arrays of shape ``(tile, tile, 3)`` (transparent areas on white).

    Raises:
        SlideReadError: The slide is missing or cannot be opened or read.
        ConfigError: An argument is invalid, or the slide has fewer than ``n`` tissue-rich
            windows.
    """
    import openslide
    from skimage.color import rgb2hsv

    if not is_int(n) or int(n) < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not is_int(tile) or int(tile) < 16:
        raise ConfigError(f"tile must be an integer of at least 16, got {tile!r}")
    if not is_int(seed) or int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    n, tile = int(n), int(tile)
    path = Path(path)
    if not path.is_file():
        raise SlideReadError(f"slide not found: {path}; check the path")
    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideReadError(
            f"cannot open slide {path} with OpenSlide ({exc}); pass a readable whole-slide image"
        ) from exc
    try:
        width, height = slide.dimensions
        if width < tile or height < tile:
            raise ConfigError(
                f"slide {path} is {width} x {height}, smaller than one {tile} px tile"
            )
        down = max(1.0, max(width, height) / 2048.0)
        thumb = slide.get_thumbnail((max(1, round(width / down)), max(1, round(height / down))))
        hsv = rgb2hsv(np.asarray(thumb.convert("RGB")))
        tissue = (hsv[..., 1] > 0.08) & (hsv[..., 2] < 0.94) & (hsv[..., 2] > 0.08)
        sy, sx = tissue.shape[0] / height, tissue.shape[1] / width
        integral = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        stride = max(1, tile // 4)
        ys = np.arange(0, height - tile + 1, stride)
        xs = np.arange(0, width - tile + 1, stride)
        y0 = np.minimum(np.floor(ys * sy).astype(int), tissue.shape[0] - 1)[:, None]
        y1 = np.clip(np.ceil((ys + tile) * sy).astype(int), 0, tissue.shape[0])[:, None]
        x0 = np.minimum(np.floor(xs * sx).astype(int), tissue.shape[1] - 1)[None, :]
        x1 = np.clip(np.ceil((xs + tile) * sx).astype(int), 0, tissue.shape[1])[None, :]
        y1, x1 = np.maximum(y1, y0 + 1), np.maximum(x1, x0 + 1)
        counts = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        frac = counts / ((y1 - y0) * (x1 - x0))
        for threshold in (0.9, 0.75, 0.6):
            cand = np.argwhere(frac >= threshold)
            if len(cand) >= n:
                break
        if len(cand) < n:
            raise ConfigError(
                f"slide {path} has only {len(cand)} tissue-rich {tile} px windows, fewer than "
                f"n={n}; ask for fewer or smaller tiles"
            )
        rng = np.random.default_rng(int(seed))
        chosen: list[tuple[int, int]] = []
        overlapping: list[tuple[int, int]] = []
        for i, j in cand[rng.permutation(len(cand))]:
            y, x = int(ys[i]), int(xs[j])
            if len(chosen) < n and all(
                abs(y - cy) >= tile or abs(x - cx) >= tile for cy, cx in chosen
            ):
                chosen.append((y, x))
            elif len(overlapping) < n:
                overlapping.append((y, x))
        chosen.extend(overlapping[: n - len(chosen)])
        out: list[np.ndarray] = []
        for y, x in chosen:
            rgba = np.asarray(slide.read_region((x, y), 0, (tile, tile)), dtype=F32)
            a = rgba[..., 3:4] / F32(255.0)
            out.append(to_uint8(rgba[..., :3] * a + F32(255.0) * (1.0 - a)))
        return out
    except openslide.OpenSlideError as exc:
        raise SlideReadError(f"cannot read slide {path} ({exc}); the file may be corrupt") from exc
    finally:
        slide.close()
