"""The coarse layout of a synthetic slide: tissue mask and modulation fields.

:class:`SlideLayout` is computed once per slide on a grid of cells; :func:`interp_axis`
gives the bilinear weights with which a tile of any level samples it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from .arrays import F32, FloatArray, mean_pool, normalise

#: Longest side of the coarse layout grid (cells).
_COARSE_MAX_SIDE = 1024


class SlideLayout:
    """Coarse tissue mask and modulation fields, computed once per slide.

    Three planes on a grid of ``cell`` level-0 pixels: tissue alpha (0-1), cellularity (the
    mix of the two procedural textures, 0-1) and stain density (about 0.8-1.2).
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        shift = 4
        while max(height, width) > _COARSE_MAX_SIDE << shift:
            shift += 1
        self.cell = 1 << shift
        ch, cw = -(-height // self.cell), -(-width // self.cell)
        self.shape = (ch, cw)
        size = math.sqrt(ch * cw)

        def smooth(sigma: float) -> FloatArray:
            # filter white noise on a grid coarse enough for sigma ~ 4 cells, then upsample
            step = max(1, int(sigma // 4))
            gh, gw = -(-ch // step) + 1, -(-cw // step) + 1
            low = ndimage.gaussian_filter(
                rng.standard_normal((gh, gw), dtype=F32), max(sigma / step, 0.5), mode="reflect"
            )
            if step > 1:
                low = ndimage.zoom(low, step, order=1, grid_mode=False)
            return normalise(np.ascontiguousarray(low[:ch, :cw]))

        noise = smooth(size / 9) + 0.45 * smooth(size / 25) + 0.18 * smooth(size / 80)
        # keep a glass margin along the slide edges, like a real section on a slide
        yy = np.minimum(np.arange(ch), ch - 1 - np.arange(ch))[:, None] / size
        xx = np.minimum(np.arange(cw), cw - 1 - np.arange(cw))[None, :] / size
        noise = noise - 3.0 * np.clip(1.0 - np.minimum(yy, xx) / 0.07, 0.0, 1.0) ** 2
        target = float(rng.uniform(0.36, 0.54))
        mask = (noise > np.quantile(noise, 1.0 - target)).astype(F32)
        self.alpha = np.clip(ndimage.gaussian_filter(mask, 0.6, mode="constant"), 0.0, 1.0)
        mix = 1.0 / (1.0 + np.exp(-1.8 * smooth(size / 14)))
        dens = (1.0 + 0.10 * smooth(size / 20)) * (
            0.85 + 0.15 * ndimage.gaussian_filter(mask, 1.5, mode="constant")
        )  # thinner towards the tissue edges
        self.fields = np.stack([self.alpha, mix, dens]).astype(F32)  # (3, ch, cw)
        self._levels: dict[int, tuple[FloatArray, int]] = {}

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float((self.alpha >= 0.5).mean())

    def add_tissue(self, y0: int, x0: int, size: int) -> None:
        """Make the level-0 box at (y0, x0) of side ``size`` solid tissue (soft edges)."""
        cell = self.cell
        r0, r1 = y0 // cell, (y0 + size - 1) // cell + 1
        c0, c1 = x0 // cell, (x0 + size - 1) // cell + 1
        mask = np.zeros(self.shape, dtype=F32)
        mask[max(0, r0 - 1) : r1 + 1, max(0, c0 - 1) : c1 + 1] = 1.0
        mask = ndimage.gaussian_filter(mask, 0.8, mode="constant")
        mask[r0:r1, c0:c1] = 1.0
        np.maximum(self.alpha, mask, out=self.alpha)
        self.fields[0] = self.alpha
        self._levels.clear()

    def level(self, level: int) -> tuple[FloatArray, int]:
        """Field planes for ``level``, padded by one cell, and their cell size (level-0 px).

        Where a level pixel is larger than a cell, the planes are mean-pooled first.
        """
        factor = max(1, (1 << level) // self.cell)
        if factor not in self._levels:
            grid = mean_pool(self.fields, factor, (1, 2))
            grid = np.pad(grid, ((0, 0), (1, 1), (1, 1)), mode="edge")
            self._levels[factor] = (np.ascontiguousarray(grid), self.cell * factor)
        return self._levels[factor]


def interp_axis(
    start: int, size: int, scale: float, n: int
) -> tuple[NDArray[np.intp], FloatArray, FloatArray]:
    """Bilinear source indices and weights along one axis of a padded grid of ``n`` cells.

    Level pixel ``p`` (centre ``(p + 0.5) * 2**L`` at level 0) maps to padded-grid coordinate
    ``(p + 0.5) * scale + 0.5`` where ``scale = 2**L / cell`` (cell centres on integers).
    """
    coord = (start + np.arange(size) + 0.5) * scale + 0.5
    coord = np.clip(coord, 0.0, n - 1.000001)
    i0 = np.floor(coord).astype(np.intp)
    w1 = (coord - i0).astype(F32)
    return i0, F32(1.0) - w1, w1
