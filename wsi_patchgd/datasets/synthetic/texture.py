"""Tissue textures of synthetic slides at any pyramid level (procedural or from real tiles).

All textures work in "ink" (``255 - rgb``), so that darkening and blending are
multiplications. :class:`ProceduralTexture` mixes a stroma-rich and a cellular H&E-like
texture; :class:`TileTexture` places real tissue tiles on the tile grid with random flips.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .arrays import F32, ByteArray, FloatArray, dihedral, hash_grid, mean_pool, to_uint8
from .noise import Spectrum, clustered_points, stamp_nuclei
from .stain import stain_rgb8


class Texture:
    """Tissue texture at any pyramid level."""

    #: Mean RGB colour of the tissue texture at level 0.
    mean_rgb: NDArray[np.float32]
    #: Mean RGB colour of its darkest 2 % of pixels (the typical nucleus).
    dark_rgb: NDArray[np.float32]

    def ink(self, level: int, py0: int, px0: int, size: int, mix: FloatArray) -> FloatArray:
        """Float32 ink (``255 - rgb``) of the ``size``-square tile at level pixel (py0, px0).

        ``mix`` (size x size, 0-1) is the local cellularity, used by textures that have it.
        """
        raise NotImplementedError


def _dark_colour(rgb: ByteArray, fraction: float = 0.02) -> NDArray[np.float32]:
    """Mean colour of the darkest ``fraction`` of (a subsample of) the pixels of ``rgb``."""
    flat = rgb.reshape(-1, 3)[::7].astype(F32)
    lum = flat.sum(axis=1)
    dark = flat[lum <= np.quantile(lum, fraction)]
    return dark.mean(axis=0).astype(F32)


class _PeriodicPyramid:
    """A seamlessly tileable RGB texture stored as ink with a mean-pooled pyramid."""

    def __init__(self, rgb: ByteArray, tile: int) -> None:
        self.mean_rgb = rgb.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(F32)
        self.dark_rgb = _dark_colour(rgb)
        self.mean_ink = F32(255.0) - self.mean_rgb
        # per level: period and the ink padded by wrapping to period + tile on each axis
        self.levels: list[tuple[int, ByteArray]] = []
        cur = np.subtract(255, rgb, dtype=np.uint8)
        while True:
            period = cur.shape[0]
            pad = ((0, tile), (0, tile), (0, 0))
            self.levels.append((period, np.pad(cur, pad, mode="wrap")))
            if period % 2 or period < 2:
                break
            quad = cur.reshape(period // 2, 2, period // 2, 2, 3).sum(axis=(1, 3), dtype=np.uint16)
            quad += 2
            quad //= 4
            cur = quad.astype(np.uint8)

    def slice(self, level: int, py0: int, px0: int, size: int) -> FloatArray:
        if level >= len(self.levels):
            return np.broadcast_to(self.mean_ink, (size, size, 3)).astype(F32)
        period, ext = self.levels[level]
        y, x = py0 % period, px0 % period
        return ext[y : y + size, x : x + size].astype(F32)


class ProceduralTexture(Texture):
    """Procedural H&E-like tissue: a stroma-rich and a cellular texture mixed by a field.

    The two textures are seamlessly tileable with different periods (2048 and 1536 px at
    level 0), so their mixture repeats only every 6144 px.
    """

    def __init__(self, rng: np.random.Generator, tile: int, scale: float) -> None:
        self.stroma = _PeriodicPyramid(self._make(rng, 2048, scale, cellular=False), tile)
        self.cellular = _PeriodicPyramid(self._make(rng, 1536, scale, cellular=True), tile)
        self.mean_rgb = (0.5 * (self.stroma.mean_rgb + self.cellular.mean_rgb)).astype(F32)
        self.dark_rgb = self.cellular.dark_rgb

    @staticmethod
    def _make(rng: np.random.Generator, size: int, scale: float, cellular: bool) -> ByteArray:
        """One seamlessly tileable uint8 RGB texture of ``size`` x ``size`` px.

        Written with in-place float32 operations: it holds a handful of ``size**2`` float
        arrays at a time (about 110 MB at most for ``size = 2048``).
        """
        spec = Spectrum(size)
        orientation = np.arctan2(
            spec.smooth_noise(rng, 700.0 * scale, 8), spec.smooth_noise(rng, 700.0 * scale, 8)
        )
        orientation *= F32(0.5)
        if cellular:
            eosin = np.tanh(spec.oriented(rng, 60.0 * scale, orientation))
            hbg = F32(0.04) * eosin
            hbg += F32(0.27)
            eosin *= F32(0.12)
            eosin += F32(0.46)
            keep = spec.noise(rng, 30.0 * scale, 0.5)  # small round vacuoles
            keep += F32(2.1)
            keep *= F32(1.6)
            nuclei = np.zeros((size, size), dtype=F32)
            n_nuc = int(size * size / (560.0 * scale * scale))
            pts = clustered_points(rng, size, n_nuc, max(4, n_nuc // 40), 40.0 * scale)
            stamp_nuclei(nuclei, rng, pts, 4.6 * scale, 0.16, (1.0, 1.6), (1.0, 1.5))
            mid = spec.smooth_noise(rng, 120.0 * scale, 4)
            mid *= F32(0.06)
            eosin += mid
            hbg += mid
        else:
            ridge = spec.oriented(rng, 10.0 * scale, orientation)  # thin collagen fibres
            np.abs(ridge, out=ridge)
            np.minimum(ridge, F32(2.0), out=ridge)
            ridge *= F32(-0.5)
            ridge += F32(1.0)
            np.square(ridge, out=ridge)
            ridge *= F32(0.4)
            ridge += F32(0.75)
            eosin = spec.oriented(rng, 45.0 * scale, orientation)  # collagen bundles
            keep = eosin * F32(1.5)  # white gaps between the bundles
            keep += F32(1.95)
            np.negative(eosin, out=eosin)
            eosin -= F32(0.5)
            eosin *= F32(2.5)
            np.exp(eosin, out=eosin)
            eosin += F32(1.0)
            np.reciprocal(eosin, out=eosin)  # sigmoid: 1 inside bundles
            hbg = F32(0.03) * eosin
            hbg += F32(0.03)
            eosin *= F32(0.75)
            eosin += F32(0.14)
            eosin *= ridge
            del ridge
            nuclei = np.zeros((size, size), dtype=F32)
            n_nuc = int(size * size / (2400.0 * scale * scale))
            pts = rng.uniform(0, size, (n_nuc, 2))
            iy, ix = pts[:, 0].astype(int), pts[:, 1].astype(int)
            angle = orientation[iy, ix].astype(np.float64) + rng.normal(0, 0.1, n_nuc)
            # spindle-shaped fibroblast nuclei along the fibres, and a few lymphocytes
            stamp_nuclei(nuclei, rng, pts, 3.8 * scale, 0.15, (2.2, 3.8), (1.1, 1.5), angle)
            lymph = rng.uniform(0, size, (n_nuc // 4, 2))
            stamp_nuclei(nuclei, rng, lymph, 3.0 * scale, 0.1, (1.0, 1.2), (1.3, 1.7))
            mid = spec.smooth_noise(rng, 120.0 * scale, 4)
            mid *= F32(0.06)
            eosin += mid
        del orientation, mid, spec
        fine = Spectrum(size).noise(rng, 3.0 * scale, 0.7)
        eosin += F32(0.02) * fine
        np.clip(keep, 0.0, 1.0, out=keep)
        np.maximum(eosin, F32(0.02), out=eosin)
        eosin *= F32(0.06) + F32(0.94) * keep
        hbg *= F32(0.1) + F32(0.9) * keep
        del keep
        # haematoxylin: nuclei with chromatin texture over the faint background stain
        np.clip(fine, -2.0, 2.0, out=fine)
        fine *= F32(0.15)
        fine += F32(0.85)
        fine *= nuclei
        np.maximum(hbg, fine, out=hbg)
        del fine
        np.clip(nuclei, 0.0, 1.0, out=nuclei)
        nuclei *= F32(-0.6)
        nuclei += F32(1.0)
        eosin *= nuclei
        del nuclei
        return stain_rgb8(hbg, eosin)

    def ink(self, level: int, py0: int, px0: int, size: int, mix: FloatArray) -> FloatArray:
        a = self.stroma.slice(level, py0, px0, size)
        b = self.cellular.slice(level, py0, px0, size)
        b -= a
        b *= mix[..., None]
        b += a
        return b


@functools.lru_cache(maxsize=1)
def procedural_texture(seed: int, tile: int, scale: float) -> ProceduralTexture:
    """The procedural texture of a seed (read-only; the last one is kept, about 35 MB)."""
    return ProceduralTexture(np.random.default_rng([seed, 2]), tile, scale)


class TileTexture(Texture):
    """Texture from real tissue tiles placed on the level-0 tile grid with random flips.

    Level 0 tile ``(ty, tx)`` shows texture tile ``hash(ty, tx) % K`` under one of the 8
    flips/rotations; level ``L`` shows the same placement with every texture tile mean-pooled
    by ``2**L`` (or, once a texture tile is smaller than a pixel, the mean of its colour).
    """

    def __init__(self, tiles: Sequence[ByteArray], tile: int, seed: int) -> None:
        self.seed = seed
        self.size = tile
        stack = np.stack([self._crop(t, tile) for t in tiles])
        self.count = stack.shape[0]
        self.mean_rgb = stack.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(F32)
        self.dark_rgb = _dark_colour(stack)
        ink = np.subtract(255, stack, dtype=np.uint8)
        del stack
        self.means = ink.mean(axis=(1, 2), dtype=np.float64).astype(F32)  # (K, 3)
        self.level0 = ink  # level 0: the flip/rotation is applied per tile
        self.variants: list[ByteArray] = [ink]  # level >= 1: all 8 variants, precomputed
        cur = ink.astype(F32)
        while cur.shape[1] >= 2:
            cur = mean_pool(cur, 2, (1, 2))
            small = to_uint8(cur)
            var = np.stack([dihedral(t, k) for t in small for k in range(8)])
            self.variants.append(np.ascontiguousarray(var))

    @staticmethod
    def _crop(arr: ByteArray, tile: int) -> ByteArray:
        h, w = arr.shape[:2]
        y, x = (h - tile) // 2, (w - tile) // 2
        return arr[y : y + tile, x : x + tile, :3]

    def _pick(self, ty: NDArray[Any], tx: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        codes = hash_grid(self.seed, ty, tx, 7)
        idx = (codes % np.uint64(self.count)).astype(np.intp)
        flip = ((codes // np.uint64(self.count)) % np.uint64(8)).astype(np.intp)
        return idx, flip

    def ink(self, level: int, py0: int, px0: int, size: int, mix: FloatArray) -> FloatArray:
        scale = 1 << level
        block = self.size // scale  # side of one texture tile at this level
        if level == 0:
            idx, flip = self._pick(np.array(py0 // size), np.array(px0 // size))
            return dihedral(self.level0[int(idx[0])], int(flip[0])).astype(F32, order="C")
        if block >= 1:
            n = size // block
            idx, flip = self._pick(
                (py0 // block + np.arange(n))[:, None], (px0 // block + np.arange(n))[None, :]
            )
            blocks = self.variants[level][idx * 8 + flip]  # (n, n, block, block, 3)
            return blocks.transpose(0, 2, 1, 3, 4).reshape(size, size, 3).astype(F32)
        # a level pixel covers several level-0 texture tiles: average their mean colours
        per = scale // self.size
        idx, _ = self._pick(
            (py0 * per + np.arange(size * per))[:, None],
            (px0 * per + np.arange(size * per))[None, :],
        )
        return mean_pool(self.means[idx], per)
