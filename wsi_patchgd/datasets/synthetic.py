"""Synthetic whole-slide images: large pyramidal JPEG-tiled TIFFs with a hidden label.

A synthetic slide looks like an H&E section on glass: irregular tissue pieces (about 30-60 % of
the area) on a near-white, slightly noisy background. Its class is decidable only from a few
small *marker* regions (each about one or two 256-pixel patches at level 0) whose nuclei differ
by class while their mean colour matches the surrounding tissue, so that a model looking at
full-resolution patches can tell the class but a heavily downscaled thumbnail barely can.

File format (read alike by OpenSlide's ``generic-tiff`` driver and by tifffile):

* one TIFF (BigTIFF above ~4 GB of pixels), one tiled page per pyramid level, level 0 first,
  reduced levels marked ``NewSubfileType = 1``, each level half the size of the one before
  (sides rounded up) until the longest side is at most 1024 px. The levels are successive
  top-level pages, not SubIFDs: OpenSlide 4 ignores SubIFDs and would report a single level.
* JPEG tiles, ``PhotometricInterpretation = YCbCr`` with 2x2 chroma subsampling (tifffile's
  default for JPEG RGB, as in most scanners' files); OpenSlide and tifffile decode the tiles
  to identical RGB.
* resolution tags in centimetres, so OpenSlide reports ``openslide.mpp-x``/``-y``.

Nothing is held at full resolution: a coarse layout (tissue mask, cellularity and stain
density fields) is computed once, and every tile of every level is rendered independently
from it and from precomputed texture pyramids (so level ``L`` looks like a ``2**L``
downsample of level 0), JPEG-encoded in worker threads and streamed to tifffile in order.
Peak memory stays under 300 MB for slides up to 100k x 100k pixels.

Example:
    >>> from wsi_patchgd.datasets.synthetic import write_synthetic_slide
    >>> slide = write_synthetic_slide("slide.tif", 8192, seed=1, label=1)  # doctest: +SKIP
    >>> slide.levels, slide.markers  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from numpy.typing import NDArray
from scipy import fft as sp_fft
from scipy import ndimage

from wsi_patchgd.errors import ConfigError, SlideReadError

__all__ = [
    "MAX_SIDE",
    "SyntheticSlide",
    "texture_tiles_from_slide",
    "write_synthetic_slide",
]

#: Largest accepted slide side in pixels.
MAX_SIDE = 262_144
#: Pyramid levels are added until the longest side is at most this many pixels.
_TOP_LEVEL_MAX_SIDE = 1024
#: Longest side of the coarse layout grid (cells).
_COARSE_MAX_SIDE = 1024
#: Chroma subsampling of the JPEG tiles (tifffile's default for RGB).
_SUBSAMPLING = (2, 2)
#: Brightness of unstained tissue (light through the slide), close to the glass.
_WHITE = 247.0

_F32 = np.float32
FloatArray = NDArray[np.float32]
ByteArray = NDArray[np.uint8]

# Optical density of one unit of stain per RGB channel (Beer-Lambert), tuned to look like H&E.
_HAEMATOXYLIN = np.array([0.80, 0.95, 0.42], dtype=_F32)
_EOSIN = np.array([0.10, 0.95, 0.42], dtype=_F32)
_HYPERCHROMATIC = np.array([0.85, 1.10, 0.62], dtype=_F32)


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote.

    Attributes:
        path: The TIFF file.
        height: Level-0 height in pixels.
        width: Level-0 width in pixels.
        levels: ``(height, width)`` of every pyramid level, level 0 first; level ``L`` is
            downsampled by ``2**L`` (sides rounded up).
        label: The class of the slide, in ``[0, n_classes)``.
        markers: Level-0 boxes ``(y0, x0, y1, x1)`` (end-exclusive) of the marker regions that
            carry the class; they lie inside the image and inside tissue.
        mpp: Microns per pixel at level 0.
        tissue_fraction: Fraction of the slide area covered by tissue.
    """

    path: Path
    height: int
    width: int
    levels: list[tuple[int, int]]
    label: int
    markers: list[tuple[int, int, int, int]]
    mpp: float
    tissue_fraction: float


# --------------------------------------------------------------------------------------------
# small helpers


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _hash(seed: int, a: Any, b: Any, salt: int = 0) -> NDArray[np.uint64]:
    """Vectorised, platform-independent 64-bit hash of integer grids (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        x = (np.array(a, dtype=np.uint64, ndmin=1) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            np.array(b, dtype=np.uint64, ndmin=1) * np.uint64(0xC2B2AE3D27D4EB4F)
        )
        x ^= np.uint64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) & (2**64 - 1))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _hash1(seed: int, a: int, b: int, salt: int = 0) -> int:
    return int(_hash(seed, a, b, salt)[0])


def _dihedral(arr: NDArray[Any], k: int) -> NDArray[Any]:
    """One of the 8 flips/90-degree rotations of the first two axes (a view)."""
    if k & 4:
        arr = arr[:, ::-1]
    return np.rot90(arr, k & 3)


def _pool(arr: FloatArray, factor: int, axes: tuple[int, int] = (0, 1)) -> FloatArray:
    """Mean-pool two adjacent axes by ``factor``, padding the far edges by replication."""
    if factor == 1:
        return arr
    a0, a1 = axes
    pad = [(0, 0)] * arr.ndim
    pad[a0] = (0, -arr.shape[a0] % factor)
    pad[a1] = (0, -arr.shape[a1] % factor)
    if any(p[1] for p in pad):
        arr = np.pad(arr, pad, mode="edge")
    shape = (
        *arr.shape[:a0],
        arr.shape[a0] // factor,
        factor,
        arr.shape[a1] // factor,
        factor,
        *arr.shape[a1 + 1 :],
    )
    return arr.reshape(shape).mean(axis=(a0 + 1, a0 + 3), dtype=_F32)


def _to_uint8(arr: NDArray[Any]) -> ByteArray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _ink_to_rgb8(ink: FloatArray) -> ByteArray:
    """uint8 RGB of an "ink" image (``255 - rgb``, float32), consuming ``ink``."""
    np.subtract(_F32(255.5), ink, out=ink)
    np.clip(ink, 0.0, 255.0, out=ink)
    return ink.astype(np.uint8, order="C")


def _stain_rgb(
    h: FloatArray, e: FloatArray, h_vec: NDArray[np.float32] = _HAEMATOXYLIN
) -> FloatArray:
    """RGB (float, 0-255) of haematoxylin/eosin concentration maps (Beer-Lambert)."""
    od = h[..., None] * h_vec
    od += e[..., None] * _EOSIN
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= _F32(_WHITE)
    return od


def _stain_rgb8(h: FloatArray, e: FloatArray, rows: int = 256) -> ByteArray:
    """Like :func:`_stain_rgb` but uint8 and row block by row block (bounded memory)."""
    out = np.empty((*h.shape, 3), dtype=np.uint8)
    for y in range(0, h.shape[0], rows):
        out[y : y + rows] = _to_uint8(_stain_rgb(h[y : y + rows], e[y : y + rows]))
    return out


def _normalise(arr: FloatArray, rows: int = 256) -> FloatArray:
    """Zero mean, unit variance, in place (float32; no full-size temporaries)."""
    arr = arr.astype(_F32, copy=False)
    arr -= arr.mean()
    sumsq = sum(float(np.square(arr[y : y + rows]).sum()) for y in range(0, arr.shape[0], rows))
    std = math.sqrt(sumsq / max(arr.size, 1))
    arr /= _F32(std if std > 0 else 1.0)
    return arr


# --------------------------------------------------------------------------------------------
# procedural texture building blocks


class _Spectrum:
    """Frequency grid of the ``rfft2`` of a square periodic image, for band-pass noise."""

    def __init__(self, size: int) -> None:
        self.size = size
        fy = np.fft.fftfreq(size).astype(_F32)[:, None]
        fx = np.fft.rfftfreq(size).astype(_F32)[None, :]
        self.freq = np.sqrt(fy * fy + fx * fx)
        self.angle = np.arctan2(fy, fx)

    def band(self, wavelength: float, bandwidth: float) -> FloatArray:
        """Log-Gaussian band-pass filter around ``1 / wavelength``."""
        out = np.maximum(self.freq, _F32(1e-6)) * _F32(wavelength)
        np.log(out, out=out)
        out *= _F32(1.0 / bandwidth)
        np.square(out, out=out)
        out *= _F32(-0.5)
        np.exp(out, out=out)
        out[0, 0] = 0.0
        return out

    def white(self, rng: np.random.Generator) -> NDArray[np.complex64]:
        return sp_fft.rfft2(rng.standard_normal((self.size, self.size), dtype=_F32))

    def inverse(self, spec: NDArray[np.complex64]) -> FloatArray:
        out = sp_fft.irfft2(spec, s=(self.size, self.size), overwrite_x=True)
        return _normalise(out)

    def noise(
        self, rng: np.random.Generator, wavelength: float, bandwidth: float = 0.6
    ) -> FloatArray:
        """Seamlessly tileable band-pass noise of unit variance and the given wavelength (px)."""
        spec = self.white(rng)
        spec *= self.band(wavelength, bandwidth)
        return self.inverse(spec)

    def smooth_noise(self, rng: np.random.Generator, wavelength: float, factor: int) -> FloatArray:
        """Like :meth:`noise` for long wavelengths: made ``factor`` times smaller, upsampled."""
        small = _Spectrum(self.size // factor).noise(rng, wavelength / factor, 0.6)
        big = ndimage.zoom(small, factor, order=1, mode="grid-wrap", grid_mode=True)
        return _normalise(big.astype(_F32, copy=False))

    def oriented(
        self, rng: np.random.Generator, wavelength: float, orientation: FloatArray
    ) -> FloatArray:
        """Tileable noise elongated along a spatially varying ``orientation`` (radians).

        Four directionally filtered versions of one white noise are blended with weights that
        follow the orientation field, which gives long wavy streaks like collagen bundles.
        """
        spec = self.white(rng)
        spec *= self.band(wavelength, 0.55)
        acc = np.zeros((self.size, self.size), dtype=_F32)
        weight = np.empty((self.size, self.size), dtype=_F32)
        for k in range(4):
            theta = k * math.pi / 4
            # streaks along theta have their energy at frequencies perpendicular to it
            wedge = np.sin(self.angle - _F32(theta + math.pi / 2))
            wedge *= _F32(1.0 / 0.3)
            np.square(wedge, out=wedge)
            wedge *= _F32(-0.5)
            np.exp(wedge, out=wedge)
            part = self.inverse(spec * wedge)
            del wedge
            # weights max(0, cos(2 (orientation - theta)))**2 sum to 1 over the 4 directions
            np.subtract(orientation, _F32(theta), out=weight)
            weight *= _F32(2.0)
            np.cos(weight, out=weight)
            np.maximum(weight, _F32(0.0), out=weight)
            np.square(weight, out=weight)
            part *= weight
            acc += part
            del part
        return _normalise(acc)


def _stamp_nuclei(
    canvas: FloatArray,
    rng: np.random.Generator,
    centres: NDArray[np.float64],
    radius: float,
    radius_sd: float,
    aspect: tuple[float, float],
    darkness: tuple[float, float],
    angle: NDArray[np.float64] | None = None,
    wrap: bool = True,
) -> None:
    """Draw soft elliptical nuclei into ``canvas`` (max-combined), wrapping at the edges."""
    size_y, size_x = canvas.shape
    for i, (cy, cx) in enumerate(centres):
        r = max(1.5, radius * float(np.exp(radius_sd * rng.standard_normal())))
        asp = float(rng.uniform(*aspect))
        ry, rx = r / math.sqrt(asp), r * math.sqrt(asp)
        theta = float(angle[i]) if angle is not None else float(rng.uniform(0, math.pi))
        value = float(rng.uniform(*darkness))
        half = int(math.ceil(max(ry, rx))) + 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(_F32)
        yy -= _F32(cy - math.floor(cy))
        xx -= _F32(cx - math.floor(cx))
        c, s = math.cos(theta), math.sin(theta)
        u = xx * _F32(c) + yy * _F32(s)
        v = yy * _F32(c) - xx * _F32(s)
        d = np.sqrt((u / _F32(rx)) ** 2 + (v / _F32(ry)) ** 2)
        stamp = np.clip((1.0 - d) * _F32(min(rx, ry)) + _F32(0.5), 0.0, 1.0) * _F32(value)
        y0, x0 = int(math.floor(cy)) - half, int(math.floor(cx)) - half
        shifts_y = (-size_y, 0, size_y) if wrap else (0,)
        shifts_x = (-size_x, 0, size_x) if wrap else (0,)
        for sy in shifts_y:
            for sx in shifts_x:
                ya, xa = y0 + sy, x0 + sx
                yb, xb = ya + stamp.shape[0], xa + stamp.shape[1]
                if yb <= 0 or xb <= 0 or ya >= size_y or xa >= size_x:
                    continue
                cy0, cx0 = max(ya, 0), max(xa, 0)
                cy1, cx1 = min(yb, size_y), min(xb, size_x)
                region = canvas[cy0:cy1, cx0:cx1]
                np.maximum(region, stamp[cy0 - ya : cy1 - ya, cx0 - xa : cx1 - xa], out=region)


def _clustered_points(
    rng: np.random.Generator, size: int, n: int, n_clusters: int, spread: float
) -> NDArray[np.float64]:
    """``n`` points in ``[0, size)^2``: half around random cluster centres, half uniform."""
    n_c = n // 2
    centres = rng.uniform(0, size, (n_clusters, 2))
    pick = rng.integers(0, n_clusters, n_c)
    clustered = centres[pick] + rng.normal(0, spread, (n_c, 2))
    uniform = rng.uniform(0, size, (n - n_c, 2))
    return np.concatenate([clustered, uniform]) % size


# --------------------------------------------------------------------------------------------
# textures (all in "ink" = 255 - RGB, so that darkening and blending are multiplications)


class _Texture:
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
    flat = rgb.reshape(-1, 3)[::7].astype(_F32)
    lum = flat.sum(axis=1)
    dark = flat[lum <= np.quantile(lum, fraction)]
    return dark.mean(axis=0).astype(_F32)


class _PeriodicPyramid:
    """A seamlessly tileable RGB texture stored as ink with a mean-pooled pyramid."""

    def __init__(self, rgb: ByteArray, tile: int) -> None:
        self.mean_rgb = rgb.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(_F32)
        self.dark_rgb = _dark_colour(rgb)
        self.mean_ink = _F32(255.0) - self.mean_rgb
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
            return np.broadcast_to(self.mean_ink, (size, size, 3)).astype(_F32)
        period, ext = self.levels[level]
        y, x = py0 % period, px0 % period
        return ext[y : y + size, x : x + size].astype(_F32)


class _ProceduralTexture(_Texture):
    """Procedural H&E-like tissue: a stroma-rich and a cellular texture mixed by a field.

    The two textures are seamlessly tileable with different periods (2048 and 1536 px at
    level 0), so their mixture repeats only every 6144 px.
    """

    def __init__(self, rng: np.random.Generator, tile: int, scale: float) -> None:
        self.stroma = _PeriodicPyramid(self._make(rng, 2048, scale, cellular=False), tile)
        self.cellular = _PeriodicPyramid(self._make(rng, 1536, scale, cellular=True), tile)
        self.mean_rgb = (0.5 * (self.stroma.mean_rgb + self.cellular.mean_rgb)).astype(_F32)
        self.dark_rgb = self.cellular.dark_rgb

    @staticmethod
    def _make(rng: np.random.Generator, size: int, scale: float, cellular: bool) -> ByteArray:
        """One seamlessly tileable uint8 RGB texture of ``size`` x ``size`` px.

        Written with in-place float32 operations: it holds a handful of ``size**2`` float
        arrays at a time (about 110 MB at most for ``size = 2048``).
        """
        spec = _Spectrum(size)
        orientation = np.arctan2(
            spec.smooth_noise(rng, 700.0 * scale, 8), spec.smooth_noise(rng, 700.0 * scale, 8)
        )
        orientation *= _F32(0.5)
        if cellular:
            eosin = np.tanh(spec.oriented(rng, 60.0 * scale, orientation))
            hbg = _F32(0.04) * eosin
            hbg += _F32(0.27)
            eosin *= _F32(0.12)
            eosin += _F32(0.46)
            keep = spec.noise(rng, 30.0 * scale, 0.5)  # small round vacuoles
            keep += _F32(2.1)
            keep *= _F32(1.6)
            nuclei = np.zeros((size, size), dtype=_F32)
            n_nuc = int(size * size / (560.0 * scale * scale))
            pts = _clustered_points(rng, size, n_nuc, max(4, n_nuc // 40), 40.0 * scale)
            _stamp_nuclei(nuclei, rng, pts, 4.6 * scale, 0.16, (1.0, 1.6), (1.0, 1.5))
            mid = spec.smooth_noise(rng, 120.0 * scale, 4)
            mid *= _F32(0.06)
            eosin += mid
            hbg += mid
        else:
            ridge = spec.oriented(rng, 10.0 * scale, orientation)  # thin collagen fibres
            np.abs(ridge, out=ridge)
            np.minimum(ridge, _F32(2.0), out=ridge)
            ridge *= _F32(-0.5)
            ridge += _F32(1.0)
            np.square(ridge, out=ridge)
            ridge *= _F32(0.4)
            ridge += _F32(0.75)
            eosin = spec.oriented(rng, 45.0 * scale, orientation)  # collagen bundles
            keep = eosin * _F32(1.5)  # white gaps between the bundles
            keep += _F32(1.95)
            np.negative(eosin, out=eosin)
            eosin -= _F32(0.5)
            eosin *= _F32(2.5)
            np.exp(eosin, out=eosin)
            eosin += _F32(1.0)
            np.reciprocal(eosin, out=eosin)  # sigmoid: 1 inside bundles
            hbg = _F32(0.03) * eosin
            hbg += _F32(0.03)
            eosin *= _F32(0.75)
            eosin += _F32(0.14)
            eosin *= ridge
            del ridge
            nuclei = np.zeros((size, size), dtype=_F32)
            n_nuc = int(size * size / (2400.0 * scale * scale))
            pts = rng.uniform(0, size, (n_nuc, 2))
            iy, ix = pts[:, 0].astype(int), pts[:, 1].astype(int)
            angle = orientation[iy, ix].astype(np.float64) + rng.normal(0, 0.1, n_nuc)
            # spindle-shaped fibroblast nuclei along the fibres, and a few lymphocytes
            _stamp_nuclei(nuclei, rng, pts, 3.8 * scale, 0.15, (2.2, 3.8), (1.1, 1.5), angle)
            lymph = rng.uniform(0, size, (n_nuc // 4, 2))
            _stamp_nuclei(nuclei, rng, lymph, 3.0 * scale, 0.1, (1.0, 1.2), (1.3, 1.7))
            mid = spec.smooth_noise(rng, 120.0 * scale, 4)
            mid *= _F32(0.06)
            eosin += mid
        del orientation, mid, spec
        fine = _Spectrum(size).noise(rng, 3.0 * scale, 0.7)
        eosin += _F32(0.02) * fine
        np.clip(keep, 0.0, 1.0, out=keep)
        np.maximum(eosin, _F32(0.02), out=eosin)
        eosin *= _F32(0.06) + _F32(0.94) * keep
        hbg *= _F32(0.1) + _F32(0.9) * keep
        del keep
        # haematoxylin: nuclei with chromatin texture over the faint background stain
        np.clip(fine, -2.0, 2.0, out=fine)
        fine *= _F32(0.15)
        fine += _F32(0.85)
        fine *= nuclei
        np.maximum(hbg, fine, out=hbg)
        del fine
        np.clip(nuclei, 0.0, 1.0, out=nuclei)
        nuclei *= _F32(-0.6)
        nuclei += _F32(1.0)
        eosin *= nuclei
        del nuclei
        return _stain_rgb8(hbg, eosin)

    def ink(self, level: int, py0: int, px0: int, size: int, mix: FloatArray) -> FloatArray:
        a = self.stroma.slice(level, py0, px0, size)
        b = self.cellular.slice(level, py0, px0, size)
        b -= a
        b *= mix[..., None]
        b += a
        return b


@functools.lru_cache(maxsize=1)
def _procedural_texture(seed: int, tile: int, scale: float) -> _ProceduralTexture:
    """The procedural texture of a seed (read-only; the last one is kept, about 35 MB)."""
    return _ProceduralTexture(np.random.default_rng([seed, 2]), tile, scale)


class _TileTexture(_Texture):
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
        self.mean_rgb = stack.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(_F32)
        self.dark_rgb = _dark_colour(stack)
        ink = np.subtract(255, stack, dtype=np.uint8)
        del stack
        self.means = ink.mean(axis=(1, 2), dtype=np.float64).astype(_F32)  # (K, 3)
        self.level0 = ink  # level 0: the flip/rotation is applied per tile
        self.variants: list[ByteArray] = [ink]  # level >= 1: all 8 variants, precomputed
        cur = ink.astype(_F32)
        while cur.shape[1] >= 2:
            cur = _pool(cur, 2, (1, 2))
            small = _to_uint8(cur)
            var = np.stack([_dihedral(t, k) for t in small for k in range(8)])
            self.variants.append(np.ascontiguousarray(var))

    @staticmethod
    def _crop(arr: ByteArray, tile: int) -> ByteArray:
        h, w = arr.shape[:2]
        y, x = (h - tile) // 2, (w - tile) // 2
        return arr[y : y + tile, x : x + tile, :3]

    def _pick(self, ty: NDArray[Any], tx: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        codes = _hash(self.seed, ty, tx, 7)
        idx = (codes % np.uint64(self.count)).astype(np.intp)
        flip = ((codes // np.uint64(self.count)) % np.uint64(8)).astype(np.intp)
        return idx, flip

    def ink(self, level: int, py0: int, px0: int, size: int, mix: FloatArray) -> FloatArray:
        scale = 1 << level
        block = self.size // scale  # side of one texture tile at this level
        if level == 0:
            idx, flip = self._pick(np.array(py0 // size), np.array(px0 // size))
            return _dihedral(self.level0[int(idx[0])], int(flip[0])).astype(_F32, order="C")
        if block >= 1:
            n = size // block
            idx, flip = self._pick(
                (py0 // block + np.arange(n))[:, None], (px0 // block + np.arange(n))[None, :]
            )
            blocks = self.variants[level][idx * 8 + flip]  # (n, n, block, block, 3)
            return blocks.transpose(0, 2, 1, 3, 4).reshape(size, size, 3).astype(_F32)
        # a level pixel covers several level-0 texture tiles: average their mean colours
        per = scale // self.size
        idx, _ = self._pick(
            (py0 * per + np.arange(size * per))[:, None],
            (px0 * per + np.arange(size * per))[None, :],
        )
        return _pool(self.means[idx], per)


# --------------------------------------------------------------------------------------------
# layout


class _Layout:
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
                rng.standard_normal((gh, gw), dtype=_F32), max(sigma / step, 0.5), mode="reflect"
            )
            if step > 1:
                low = ndimage.zoom(low, step, order=1, grid_mode=False)
            return _normalise(np.ascontiguousarray(low[:ch, :cw]))

        noise = smooth(size / 9) + 0.45 * smooth(size / 25) + 0.18 * smooth(size / 80)
        # keep a glass margin along the slide edges, like a real section on a slide
        yy = np.minimum(np.arange(ch), ch - 1 - np.arange(ch))[:, None] / size
        xx = np.minimum(np.arange(cw), cw - 1 - np.arange(cw))[None, :] / size
        noise = noise - 3.0 * np.clip(1.0 - np.minimum(yy, xx) / 0.07, 0.0, 1.0) ** 2
        target = float(rng.uniform(0.36, 0.54))
        mask = (noise > np.quantile(noise, 1.0 - target)).astype(_F32)
        self.alpha = np.clip(ndimage.gaussian_filter(mask, 0.6, mode="constant"), 0.0, 1.0)
        mix = 1.0 / (1.0 + np.exp(-1.8 * smooth(size / 14)))
        dens = (1.0 + 0.10 * smooth(size / 20)) * (
            0.85 + 0.15 * ndimage.gaussian_filter(mask, 1.5, mode="constant")
        )  # thinner towards the tissue edges
        self.fields = np.stack([self.alpha, mix, dens]).astype(_F32)  # (3, ch, cw)
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
        mask = np.zeros(self.shape, dtype=_F32)
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
            grid = _pool(self.fields, factor, (1, 2))
            grid = np.pad(grid, ((0, 0), (1, 1), (1, 1)), mode="edge")
            self._levels[factor] = (np.ascontiguousarray(grid), self.cell * factor)
        return self._levels[factor]


def _interp_axis(
    start: int, size: int, scale: float, n: int
) -> tuple[NDArray[np.intp], FloatArray, FloatArray]:
    """Bilinear source indices and weights along one axis of a padded grid of ``n`` cells.

    Level pixel ``p`` (centre ``(p + 0.5) * 2**L`` at level 0) maps to padded-grid coordinate
    ``(p + 0.5) * scale + 0.5`` where ``scale = 2**L / cell`` (cell centres on integers).
    """
    coord = (start + np.arange(size) + 0.5) * scale + 0.5
    coord = np.clip(coord, 0.0, n - 1.000001)
    i0 = np.floor(coord).astype(np.intp)
    w1 = (coord - i0).astype(_F32)
    return i0, _F32(1.0) - w1, w1


# --------------------------------------------------------------------------------------------
# markers


@dataclass(frozen=True)
class _MarkerStyle:
    """How the nuclei of a class's marker regions look (sizes in level-0 px at 0.5 um/px)."""

    radius: float
    radius_sd: float
    aspect: tuple[float, float]
    darkness: tuple[float, float]
    area: float  # fraction of the region covered by nuclei
    arrangement: str  # "sheet", "streams" or "nests"
    h_vec: NDArray[np.float32]


def _marker_style(label: int) -> _MarkerStyle:
    """Class 0: neutral small regular nuclei; class c > 0: tumour-like, specific to c."""
    if label == 0:
        return _MarkerStyle(4.2, 0.08, (1.0, 1.3), (1.0, 1.2), 0.16, "sheet", _HAEMATOXYLIN)
    c = label
    arrangement = ("sheet", "streams", "nests")[(c - 1) % 3]
    dark = 0.05 * min(c, 6)
    return _MarkerStyle(
        radius=min(5.8 + 0.4 * c, 8.5) * (0.85 if arrangement == "streams" else 1.0),
        radius_sd=min(0.15 + 0.05 * c, 0.45),
        aspect=(2.5, 4.0) if arrangement == "streams" else (1.0, 1.4 + 0.1 * min(c, 6)),
        darkness=(1.25 + dark, 1.55 + dark),
        area=min(0.20 + 0.02 * c, 0.3),
        arrangement=arrangement,
        h_vec=_HYPERCHROMATIC if c % 2 else 0.5 * (_HAEMATOXYLIN + _HYPERCHROMATIC),
    )


@dataclass(frozen=True)
class _MarkerImage:
    """A marker at one level, in ink: nuclei (premultiplied), their cover, region, paling."""

    nuclei_ink: FloatArray  # (h, w, 3) ink of the nuclei times their cover
    cover: FloatArray  # (h, w) opacity of the nuclei
    region: FloatArray  # (h, w) soft mask of the marker region
    gain: NDArray[np.float32]  # (3,) factor on the tissue ink inside the region

    def pooled(self, factor: int) -> _MarkerImage:
        return _MarkerImage(
            _pool(self.nuclei_ink, factor),
            _pool(self.cover, factor),
            _pool(self.region, factor),
            self.gain,
        )


def _marker_image(
    rng: np.random.Generator,
    size: int,
    label: int,
    scale: float,
    target: NDArray[np.float32],
    dark: NDArray[np.float32],
) -> _MarkerImage:
    """Level-0 nuclei overlay of one marker region of ``size`` x ``size`` px.

    The region keeps the surrounding tissue texture, paled by a per-channel factor so that,
    with the class-specific nuclei drawn over it, its mean colour equals ``target`` (the mean
    tissue colour): the region does not stand out in a thumbnail. Nuclei are as dark as
    ``dark`` (the texture's typical nucleus) for class 0 and darker for the other classes.
    """
    style = _marker_style(label)
    radius = style.radius * scale
    n = int(style.area * size * size * 0.8 / (math.pi * radius * radius))
    nuclei = np.zeros((size, size), dtype=_F32)
    angle = None
    if style.arrangement == "nests":  # gland-like rosettes: nuclei on rings around lumina
        radius *= 0.8
        ring = 2.6 * radius
        step = 2.0 * ring + 7.0 * radius
        grid = np.arange(step / 2, size, step)
        centres = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
        centres = centres + rng.uniform(-0.2, 0.2, centres.shape) * step
        per_ring = max(5, int(2 * math.pi * ring / (2.2 * radius)))
        phi = np.linspace(0, 2 * math.pi, per_ring, endpoint=False)[None, :] + rng.uniform(
            0, 2 * math.pi, (len(centres), 1)
        )
        phi = (phi + rng.normal(0, 0.08, phi.shape)).reshape(-1)
        rr = ring * rng.normal(1.0, 0.06, phi.shape)
        pts = np.repeat(centres, per_ring, axis=0)
        pts += np.stack([rr * np.sin(phi), rr * np.cos(phi)], axis=1)
        angle = phi + math.pi / 2
    elif style.arrangement == "streams":  # spindle cells along a smooth flow
        pts = rng.uniform(0, size, (n, 2))
        flow = rng.uniform(0, math.pi)
        angle = flow + 0.35 * np.sin(pts[:, 0] / (size / 3.0)) + rng.normal(0, 0.15, n)
    else:
        pts = rng.uniform(0, size, (n, 2))
    _stamp_nuclei(
        nuclei, rng, pts, radius, style.radius_sd, style.aspect, style.darkness, angle, False
    )
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=_F32), 1.0)
    chromatin = _F32(0.8) + _F32(0.2) * np.clip(_normalise(fine), -2, 2)
    cover = np.clip(nuclei * _F32(2.5), 0.0, 1.0)
    depth = np.maximum(nuclei, _F32(0.8)) * chromatin
    eosin = np.full_like(depth, 0.12)
    # scale the stain so that the nuclei are darker than the texture's own (hyperchromatic)
    solid = cover > 0.9
    if solid.any():
        lum = float(_stain_rgb(depth[solid], eosin[solid], style.h_vec).mean())
        goal = float(dark.mean()) * (1.15 if label == 0 else 0.75)
        ratio = math.log(max(goal, 5.0) / _WHITE) / math.log(min(lum, _WHITE - 1.0) / _WHITE)
        depth *= _F32(np.clip(ratio, 0.7, 3.0))
    ink = _F32(255.0) - _stain_rgb(depth, eosin, style.h_vec)
    # irregular blob-shaped region with a soft edge
    yy, xx = np.mgrid[0:size, 0:size].astype(_F32)
    c = (size - 1) / 2.0
    theta = np.arctan2(yy - c, xx - c)
    wobble = np.ones_like(theta)
    for harmonic in (2, 3, 5):
        wobble += _F32(0.06) * np.cos(harmonic * theta + _F32(rng.uniform(0, 2 * math.pi)))
    rho = np.hypot(yy - c, xx - c) / (_F32(0.47 * size) * wobble / wobble.max())
    region = np.clip((1.0 - rho) * _F32(size * 0.06), 0.0, 1.0).astype(_F32)
    cover *= region
    nuclei_ink = (ink * cover[..., None]).astype(_F32)
    # pale the tissue under the region so that its mean colour stays that of normal tissue:
    # mean ink = gain * tissue_ink * (1 - phi) + mean nuclei ink  ==  tissue_ink
    weight = float(region.sum())
    phi_n = float((cover * region).sum()) / weight
    nuc_mean = (nuclei_ink * region[..., None]).sum(axis=(0, 1)) / weight
    tissue_ink = np.maximum(_F32(255.0) - target, _F32(1.0))
    gain = (tissue_ink - nuc_mean) / (tissue_ink * max(1e-3, 1.0 - phi_n))
    return _MarkerImage(nuclei_ink, cover, region, np.clip(gain, 0.15, 1.0).astype(_F32))


@dataclass(frozen=True)
class _Marker:
    box: tuple[int, int, int, int]  # level 0 (y0, x0, y1, x1)
    levels: list[tuple[int, int, _MarkerImage] | None]  # per level: (y0, x0, image)

    def paste(self, level: int, py0: int, px0: int, ink: FloatArray) -> None:
        """Overlay the marker on the tissue ink of the tile at level pixel (py0, px0)."""
        entry = self.levels[level] if level < len(self.levels) else None
        if entry is None:
            return
        my0, mx0, img = entry
        size = ink.shape[0]
        y0, x0 = max(my0, py0), max(mx0, px0)
        y1 = min(my0 + img.region.shape[0], py0 + size)
        x1 = min(mx0 + img.region.shape[1], px0 + size)
        if y0 >= y1 or x0 >= x1:
            return
        dst = ink[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
        src = (slice(y0 - my0, y1 - my0), slice(x0 - mx0, x1 - mx0))
        dst *= _F32(1.0) - (_F32(1.0) - img.gain) * img.region[src][..., None]
        dst *= _F32(1.0) - img.cover[src][..., None]
        dst += img.nuclei_ink[src]


def _place_markers(
    rng: np.random.Generator, layout: _Layout, height: int, width: int, sizes: list[int]
) -> list[tuple[int, int]]:
    """Top-left level-0 positions (multiples of 16) of non-overlapping markers in tissue.

    A marker goes at a random place where the tissue mask is solid under its whole box; if
    there is none (small slides), at the free place with the most tissue, and tissue is then
    added under it, so that markers always lie inside tissue.
    """
    cell = layout.cell
    placed: list[tuple[int, int, int]] = []

    def fits(y0: int, x0: int, size: int) -> bool:
        gap = size // 2
        return (
            y0 + size <= height
            and x0 + size <= width
            and all(
                y0 >= py + ps + gap or py >= y0 + size + gap
                or x0 >= px + ps + gap or px >= x0 + size + gap
                for py, px, ps in placed
            )
        )  # fmt: skip

    def window_sums(values: NDArray[Any], nb: int) -> NDArray[Any]:
        integral = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return integral[nb:, nb:] - integral[:-nb, nb:] - integral[nb:, :-nb] + integral[:-nb, :-nb]

    for size in sizes:
        # a window of nb cells from cell (i, j) holds the box placed at the next multiple of 16
        nb = -(-(size + 15) // cell)
        if nb > min(layout.shape):
            raise ConfigError(
                f"a {height} x {width} slide is too small for marker regions of {size} px; "
                f"use a larger slide"
            )
        found = None
        for threshold in (0.98, 0.9, 0.7):
            solid = window_sums((layout.alpha >= threshold).astype(np.int64), nb) == nb * nb
            cand = np.argwhere(solid)
            for i, j in cand[rng.permutation(len(cand))][:20000]:
                y0, x0 = -(-int(i) * cell // 16) * 16, -(-int(j) * cell // 16) * 16
                if fits(y0, x0, size):
                    found = (y0, x0)
                    break
            if found is not None:
                break
        if found is None:
            mean = window_sums(layout.alpha.astype(np.float64), nb)
            order = np.argsort(-mean, axis=None, kind="stable")[:50000]
            for flat in order:
                i, j = divmod(int(flat), mean.shape[1])
                y0, x0 = -(-i * cell // 16) * 16, -(-j * cell // 16) * 16
                if fits(y0, x0, size):
                    found = (y0, x0)
                    layout.add_tissue(y0, x0, size)
                    break
        if found is None:
            raise ConfigError(
                f"cannot place {len(sizes)} marker regions of about {max(sizes)} px apart from "
                f"each other in a {height} x {width} slide; use a larger slide or fewer "
                f"markers (n_markers)"
            )
        placed.append((found[0], found[1], size))
    return [(y, x) for y, x, _ in placed]


# --------------------------------------------------------------------------------------------
# rendering


class _Renderer:
    """Renders and JPEG-encodes any tile of any level; thread-safe and deterministic."""

    #: Jitter of the tissue edge by the local texture darkness (ragged edges).
    JITTER = 0.2

    def __init__(
        self,
        layout: _Layout,
        texture: _Texture,
        markers: list[_Marker],
        glass: list[ByteArray],
        tile: int,
        quality: int,
        seed: int,
    ) -> None:
        self.layout = layout
        self.texture = texture
        self.markers = markers
        self.tile = tile
        self.quality = quality
        self.seed = seed
        self.ink_ref = _F32(255.0 - float(texture.mean_rgb.mean()))
        # every flip/rotation of every glass tile, and its JPEG (glass tiles are the majority)
        self.glass = [np.ascontiguousarray(_dihedral(g, k)) for g in glass for k in range(8)]
        self.glass_jpeg = [self.encode(g) for g in self.glass]

    def encode(self, arr: ByteArray) -> bytes:
        return bytes(
            imagecodecs.jpeg8_encode(
                arr,
                level=self.quality,
                colorspace="RGB",
                outcolorspace="YCBCR",
                subsampling=_SUBSAMPLING,
            )
        )

    def jpeg(self, level: int, ty: int, tx: int) -> bytes:
        """The JPEG bytes of tile (ty, tx) of ``level``."""
        out = self.render(level, ty, tx)
        return self.glass_jpeg[out] if isinstance(out, int) else self.encode(out)

    def render(self, level: int, ty: int, tx: int) -> ByteArray | int:
        """Tile (ty, tx) of ``level`` as RGB uint8, or the index of a pure glass tile."""
        size = self.tile
        py0, px0 = ty * size, tx * size
        glass_index = _hash1(self.seed, ty, tx, 11 + level) % len(self.glass)
        grid, cell = self.layout.level(level)
        scale = (1 << level) / cell
        iy, wy0, wy1 = _interp_axis(py0, size, scale, grid.shape[1])
        ix, wx0, wx1 = _interp_axis(px0, size, scale, grid.shape[2])
        r0, c0 = int(iy[0]), int(ix[0])
        sub = grid[:, r0 : int(iy[-1]) + 2, c0 : int(ix[-1]) + 2]
        iy -= r0
        ix -= c0
        sharp = max(2.0, cell / (1 << level))  # tissue edges ~2 px wide at every level
        a_max, a_min = float(sub[0].max()), float(sub[0].min())
        if (a_max - 0.5 + self.JITTER) * sharp + 0.5 <= 0.0:
            return glass_index
        full = (a_min - 0.5 - self.JITTER) * sharp + 0.5 >= 1.0
        planes = sub[1:] if full else sub
        # bilinear interpolation of the field planes: rows, then columns
        rows = planes[:, iy] * wy0[:, None]
        rows += planes[:, iy + 1] * wy1[:, None]
        fields = rows[:, :, ix] * wx0
        fields += rows[:, :, ix + 1] * wx1
        mix, dens = fields[-2], fields[-1]
        ink = self.texture.ink(level, py0, px0, size, mix)
        for marker in self.markers:
            marker.paste(level, py0, px0, ink)
        ink *= dens[..., None]  # stain density
        if not full:
            alpha = ink @ np.full(3, 1.0 / 3.0, dtype=_F32)  # darkness jitters the edge
            alpha -= self.ink_ref
            alpha *= _F32(1.0 / 80.0)
            np.clip(alpha, -1.0, 1.0, out=alpha)
            alpha *= _F32(self.JITTER)
            alpha += fields[0]
            alpha -= _F32(0.5)
            alpha *= _F32(sharp)
            alpha += _F32(0.5)
            np.clip(alpha, 0.0, 1.0, out=alpha)
            glass = np.subtract(_F32(255.0), self.glass[glass_index], dtype=_F32)
            ink -= glass
            ink *= alpha[..., None]
            ink += glass
        return _ink_to_rgb8(ink)


def _glass_tiles(rng: np.random.Generator, tile: int) -> list[ByteArray]:
    """Near-white glass with slight sensor noise (4 tiles, used under 8 flips each)."""
    base = np.array([245.0, 244.0, 242.0]) + rng.uniform(-2.0, 2.0, 3)
    return [_to_uint8(base + rng.normal(0.0, 1.2, (tile, tile, 3))) for _ in range(4)]


def _levels(height: int, width: int) -> list[tuple[int, int]]:
    levels = [(height, width)]
    while max(levels[-1]) > _TOP_LEVEL_MAX_SIDE:
        h, w = levels[-1]
        levels.append((-(-h // 2), -(-w // 2)))
    return levels


# --------------------------------------------------------------------------------------------
# public API


def _check_args(
    height: object,
    width: object,
    label: object,
    n_classes: object,
    n_markers: object,
    tile: object,
    quality: object,
    mpp: object,
    seed: object,
) -> None:
    """Raise :class:`ConfigError` naming the first invalid argument."""

    def integer(name: str, value: object, lo: int, hi: int, what: str) -> int:
        if not _is_int(value) or not lo <= int(value) <= hi:  # type: ignore[call-overload]
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return int(value)  # type: ignore[call-overload]

    t = integer("tile", tile, 64, 4096, "a multiple of 16 between 64 and 4096")
    if t % 16:
        raise ConfigError(f"tile must be a multiple of 16 between 64 and 4096, got {tile!r}")
    for name, value in (("height", height), ("width", width)):
        integer(name, value, t, MAX_SIDE, f"an integer between the tile size ({t}) and {MAX_SIDE}")
    k = integer("n_classes", n_classes, 2, 64, "an integer between 2 and 64")
    integer("label", label, 0, k - 1, f"an integer in [0, n_classes) = [0, {k})")
    integer("n_markers", n_markers, 1, 256, "an integer between 1 and 256")
    integer("quality", quality, 1, 100, "an integer between 1 and 100")
    integer("seed", seed, 0, 2**63 - 1, "a non-negative integer")
    if (
        isinstance(mpp, bool)
        or not isinstance(mpp, (int, float, np.integer, np.floating))
        or not 0.01 <= float(mpp) <= 100.0
    ):
        raise ConfigError(f"mpp must be a number between 0.01 and 100 (microns), got {mpp!r}")


def _check_texture_tiles(tiles: Sequence[np.ndarray], tile: int) -> list[ByteArray]:
    if isinstance(tiles, np.ndarray) and tiles.ndim == 3:
        raise ConfigError("texture_tiles must be a sequence of RGB arrays, not a single array")
    out: list[ByteArray] = []
    for i, t in enumerate(tiles):
        arr = np.asarray(t)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ConfigError(
                f"texture_tiles[{i}] must be an RGB uint8 array (H, W, 3), got "
                f"{arr.dtype} {arr.shape}"
            )
        if arr.shape[0] < tile or arr.shape[1] < tile:
            raise ConfigError(
                f"texture_tiles[{i}] is {arr.shape[0]} x {arr.shape[1]}, smaller than the tile "
                f"size {tile}; pass tiles of at least {tile} x {tile} px"
            )
        out.append(arr)
    if not out:
        raise ConfigError("texture_tiles is empty; pass at least one RGB tile, or None")
    if len(out) > 256:
        raise ConfigError(f"texture_tiles holds {len(out)} tiles; pass at most 256")
    return out


def write_synthetic_slide(
    path: str | os.PathLike[str],
    height: int,
    width: int | None = None,
    *,
    seed: int = 0,
    label: int = 0,
    n_classes: int = 2,
    n_markers: int = 3,
    tile: int = 256,
    quality: int = 90,
    mpp: float = 0.5,
    texture_tiles: Sequence[np.ndarray] | None = None,
    texture_seed: int | None = None,
    progress: bool = False,
) -> SyntheticSlide:
    """Write a pyramidal JPEG-tiled TIFF that looks like an H&E slide with a hidden label.

    The file is written under a temporary name beside ``path`` and renamed into place once
    complete, so ``path`` never holds a half-written slide. The same arguments (and the same
    ``texture_tiles``) give a byte-identical file.

    Args:
        path: Output ``.tif`` file (replaced if it exists); its folder is created if missing.
        height: Level-0 height in pixels (``tile`` to :data:`MAX_SIDE`).
        width: Level-0 width in pixels; ``None`` for a square slide.
        seed: Seed of the layout, the texture and the marker positions.
        label: Class of the slide, in ``[0, n_classes)``.
        n_classes: Number of classes (2-64). Class 0 markers carry a neutral texture (small
            regular nuclei); class ``c > 0`` markers hold dense, dark, pleomorphic tumour-like
            nuclei whose size, density, colour and arrangement (sheets, spindle streams or
            gland-like nests) depend on ``c``.
        n_markers: Number of marker regions, each 288-384 px square at level 0 (about one to
            two 256-px patches), placed inside tissue.
        tile: TIFF tile side in pixels (multiple of 16, 64-4096).
        quality: JPEG quality (1-100).
        mpp: Microns per pixel at level 0, written as TIFF resolution (pixels per cm); the
            procedural nuclei and fibres are scaled to it.
        texture_tiles: Real tissue tiles (RGB uint8 arrays of at least ``tile`` x ``tile``
            px, centre-cropped; see :func:`texture_tiles_from_slide`) to texture the tissue
            with, placed on the level-0 tile grid with random flips and 90-degree rotations;
            ``None`` for the procedural H&E-like texture.
        texture_seed: Seed of the procedural texture when it should differ from ``seed``
            (a dataset sharing one texture builds it once: ~3 s saved per slide).
        progress: Show a tqdm progress bar over tiles.

    Returns:
        A :class:`SyntheticSlide` describing the file, including the marker boxes.

    Raises:
        ConfigError: An argument is invalid, or the markers do not fit inside the tissue.
        OSError: The file cannot be written.
    """
    width = height if width is None else width
    _check_args(height, width, label, n_classes, n_markers, tile, quality, mpp, seed)
    height, width, tile, quality = int(height), int(width), int(tile), int(quality)
    label, n_markers, seed, mpp = int(label), int(n_markers), int(seed), float(mpp)
    tiles = None if texture_tiles is None else _check_texture_tiles(texture_tiles, tile)

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream])

    feature_scale = float(np.clip(0.5 / mpp, 0.5, 2.0))
    levels = _levels(height, width)
    layout = _Layout(rng(1), height, width)
    marker_rng = rng(3)
    sizes = [16 * int(marker_rng.integers(18, 25)) for _ in range(n_markers)]  # 288-384 px
    positions = _place_markers(marker_rng, layout, height, width, sizes)
    texture: _Texture
    if tiles is None:
        tseed = seed if texture_seed is None else int(texture_seed)
        texture = _procedural_texture(tseed, tile, feature_scale)
    else:
        texture = _TileTexture(tiles, tile, seed)
    markers: list[_Marker] = []
    for k, ((y0, x0), size) in enumerate(zip(positions, sizes, strict=True)):
        image = _marker_image(
            rng(100 + k), size, label, feature_scale, texture.mean_rgb, texture.dark_rgb
        )
        per_level: list[tuple[int, int, _MarkerImage] | None] = []
        for lv in range(len(levels)):
            f = 1 << lv
            per_level.append((y0 // f, x0 // f, image.pooled(f)) if size // f >= 2 else None)
        markers.append(_Marker((y0, x0, y0 + size, x0 + size), per_level))
    renderer = _Renderer(layout, texture, markers, _glass_tiles(rng(4), tile), tile, quality, seed)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    bigtiff = height * width * 3 > 2**32 - 2**28  # compressed data stays below this
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(-(-h // tile) * -(-w // tile) for h, w in levels)
        bar = tqdm(total=total, unit="tile", desc=path.name)
    workers = max(1, min(8, os.cpu_count() or 1))
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="synthetic") as pool,
            tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer,
        ):
            for lv, (h, w) in enumerate(levels):
                jobs = [(lv, ty, tx) for ty in range(-(-h // tile)) for tx in range(-(-w // tile))]
                lv_mpp = mpp * (1 << lv)
                writer.write(
                    _encoded_tiles(pool, renderer, jobs, 4 * workers, bar),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    subsampling=_SUBSAMPLING,
                    resolution=(1e4 / lv_mpp, 1e4 / lv_mpp),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if lv else 0,
                    description=f"wsi_patchgd synthetic slide; mpp={mpp}" if lv == 0 else None,
                    software="wsi_patchgd",
                    metadata=None,
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return SyntheticSlide(
        path=path,
        height=height,
        width=width,
        levels=levels,
        label=label,
        markers=[m.box for m in markers],
        mpp=mpp,
        tissue_fraction=layout.tissue_fraction,
    )


def _encoded_tiles(
    pool: ThreadPoolExecutor,
    renderer: _Renderer,
    jobs: list[tuple[int, int, int]],
    prefetch: int,
    bar: Any,
) -> Iterator[bytes]:
    """JPEG tiles rendered in ``pool``, yielded in order, at most ``prefetch`` in flight."""
    pending: deque[Future[bytes]] = deque()
    todo = iter(jobs)
    for job in todo:
        pending.append(pool.submit(renderer.jpeg, *job))
        if len(pending) >= prefetch:
            break
    try:
        while pending:
            data = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(renderer.jpeg, *following))
            if bar is not None:
                bar.update(1)
            yield data
    finally:
        for future in pending:
            future.cancel()


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

    if not _is_int(n) or int(n) < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not _is_int(tile) or int(tile) < 16:
        raise ConfigError(f"tile must be an integer of at least 16, got {tile!r}")
    if not _is_int(seed) or int(seed) < 0:
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
            rgba = np.asarray(slide.read_region((x, y), 0, (tile, tile)), dtype=_F32)
            a = rgba[..., 3:4] / _F32(255.0)
            out.append(_to_uint8(rgba[..., :3] * a + _F32(255.0) * (1.0 - a)))
        return out
    except openslide.OpenSlideError as exc:
        raise SlideReadError(f"cannot read slide {path} ({exc}); the file may be corrupt") from exc
    finally:
        slide.close()


def make_synthetic_dataset(
    out: str | os.PathLike[str],
    n_slides: int,
    side: int,
    *,
    n_classes: int = 2,
    n_markers: int = 3,
    seed: int = 0,
    val_every: int = 3,
    convert: bool = True,
    patch_size: int = 256,
    workers: int | None = None,
    log: Any = None,
    dashboard: bool = False,
) -> Path:
    """A labelled set of synthetic slides (and, with ``convert``, their stores + a manifest).

    Slide ``i`` gets label ``i % n_classes``; every ``val_every``-th slide is fold 1
    (validation), the rest fold 0. Existing slide files are kept (re-running resumes). Writes
    ``out/slides/slide<i>.tif``, ``out/labels.csv`` (file, label, fold, marker boxes) and, with
    ``convert``, ``out/stores/`` and ``out/manifest.csv``. ``dashboard``: serve the
    conversion's local Dask dashboard on 127.0.0.1 and print its URL.

    Returns:
        The manifest path (``convert``) or the labels path.

    Raises:
        ConfigError: bad sizes or counts; RuntimeError if a conversion fails.
    """
    import csv
    import json as _json

    from ..data.manifest import ManifestRow, write_manifest

    if n_slides < 1:
        raise ConfigError(f"n_slides={n_slides}: need at least one slide")
    root = Path(out)
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    paths: list[str] = []
    known: dict[str, str] = {}  # marker boxes of slides written by an earlier run
    if (root / "labels.csv").exists():
        with open(root / "labels.csv", newline="") as fh:
            known = {r["file"]: r["markers"] for r in csv.DictReader(fh)}
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "fold", "markers"])
        for i in range(n_slides):
            label = i % n_classes
            fold = 1 if val_every and i % val_every == val_every - 1 else 0
            p = slides / f"slide{i:03d}.tif"
            res = None
            if not p.exists():
                res = write_synthetic_slide(
                    p,
                    side,
                    seed=seed * 100003 + i,
                    label=label,
                    n_classes=n_classes,
                    n_markers=n_markers,
                    texture_seed=seed,
                )
                if log:
                    log(f"  slide {i + 1}/{n_slides}: {p.name} (label {label})")
            markers = _json.dumps(res.markers) if res else known.get(p.name, "null")
            w.writerow([p.name, label, fold, markers])
            paths.append(str(p))
            rows.append(ManifestRow(p.stem, f"stores/{p.stem}.zarr", label, fold))
    if not convert:
        return root / "labels.csv"
    from ..store import ConvertOptions, convert_many

    results = convert_many(
        paths,
        str(root / "stores"),
        ConvertOptions(patch_size=patch_size),
        workers=workers,
        quiet=True,
        report=str(root / "convert-report.json"),
        dashboard=dashboard,
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"conversion failed: {failed[0].reason}")
    write_manifest(str(root / "manifest.csv"), rows)
    return root / "manifest.csv"
