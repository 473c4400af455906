"""Per-patch tissue fractions: the exact mean of a tissue mask over every patch of a grid.

:func:`patch_tissue_fractions` turns a mask into the tissue fraction of every patch of a
pyramid level's patch grid (what the sampler needs), through a :func:`summed_area_table`.
"""

from __future__ import annotations

import math

import numpy as np


def _edge_interp(table: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of a summed-area table along ``axis`` at positions ``pos``.

    ``pos`` must already be clipped to ``[0, table.shape[axis] - 1]``.
    """
    size = table.shape[axis] - 1
    lo = np.minimum(np.floor(pos).astype(np.int64), max(size - 1, 0))
    frac = pos - lo
    hi = np.minimum(lo + 1, size)
    a = np.take(table, lo, axis=axis)
    b = np.take(table, hi, axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    f = frac.reshape(shape)
    return a * (1.0 - f) + b * f


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """``sat[a, b] = sum(mask[:a, :b])`` as float64, shape ``(h + 1, w + 1)`` (exact: the
    sums are formed in int64). Pass it to :func:`patch_tissue_fractions` when one mask serves
    many levels."""
    m = np.asarray(mask)
    mh, mw = m.shape
    exact = np.int32 if mh * mw < 2**31 else np.int64  # sums up to the pixel count, exact
    sat = np.zeros((mh + 1, mw + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(m != 0, axis=0, dtype=exact), axis=1, dtype=exact)
    return sat


def patch_tissue_fractions(
    mask: np.ndarray,
    scale: float,
    patch_size: int,
    grid_shape: tuple[int, int],
    sat: np.ndarray | None = None,
) -> np.ndarray:
    """Tissue fraction of every patch of a level's non-overlapping patch grid.

    The mask is a function that is constant on each mask pixel (pixel ``(r, c)`` covers
    ``[r, r + 1) x [c, c + 1)``) and 0 outside the mask. Patch ``(i, j)`` covers level pixels
    ``[i P, (i + 1) P) x [j P, (j + 1) P)``, i.e. the box ``[i P s, (i + 1) P s) x
    [j P s, (j + 1) P s)`` in mask pixels; its fraction is the exact mean of the mask over
    that box (area-weighted at fractional edges). The integral is read from a summed-area
    table, which is bilinear in fractional coordinates, so the cost is one cumulative sum of
    the mask plus O(grid size).

    Args:
        mask: 2-D boolean tissue mask at some coarse resolution.
        scale: Mask pixels per level pixel (``1/16`` when the mask is 16x coarser than the
            level; above 1 when the mask is finer).
        patch_size: Patch side ``P`` in level pixels.
        grid_shape: ``(n_h, n_w)`` patches; the grid may extend past the mask (that part
            counts as background).
        sat: :func:`summed_area_table` of ``mask``, if already computed.

    Returns:
        ``float32`` array of shape ``grid_shape`` with values in ``[0, 1]``.

    Raises:
        ValueError: ``mask`` is not 2-D, ``scale`` is not a positive finite number,
            ``patch_size`` is not a positive integer or ``grid_shape`` is not two
            non-negative integers.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"patch_tissue_fractions expects a 2-D mask, got shape {m.shape}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
        raise ValueError(f"patch_tissue_fractions: scale must be a number, got {scale!r}")
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"patch_tissue_fractions: scale must be positive and finite, got {scale}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
        raise ValueError(f"patch_tissue_fractions: patch_size must be an int, got {patch_size!r}")
    if patch_size < 1:
        raise ValueError(f"patch_tissue_fractions: patch_size must be >= 1, got {patch_size}")
    bad_grid = ValueError(
        f"patch_tissue_fractions: grid_shape must be two non-negative ints, got {grid_shape!r}"
    )
    try:
        gh, gw = grid_shape
    except (TypeError, ValueError):
        raise bad_grid from None
    for g in (gh, gw):
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 0:
            raise bad_grid
    n_h, n_w = int(gh), int(gw)
    out = np.zeros((n_h, n_w), dtype=np.float32)
    mh, mw = m.shape
    if n_h == 0 or n_w == 0 or mh == 0 or mw == 0:
        return out

    satf = summed_area_table(m) if sat is None else sat
    if satf.shape != (mh + 1, mw + 1):
        raise ValueError(f"patch_tissue_fractions: sat shape {satf.shape} != mask shape + 1")

    side = patch_size * s  # patch side in mask pixels
    ys = np.clip(np.arange(n_h + 1, dtype=np.float64) * side, 0.0, float(mh))
    xs = np.clip(np.arange(n_w + 1, dtype=np.float64) * side, 0.0, float(mw))
    rows = _edge_interp(satf, ys, axis=0)  # (n_h + 1, mw + 1)
    corners = _edge_interp(rows, xs, axis=1)  # (n_h + 1, n_w + 1)
    box = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    out[...] = np.clip(box / (side * side), 0.0, 1.0)
    return out
