"""Procedural building blocks of synthetic tissue: tileable band-pass noise and nuclei.

:class:`Spectrum` makes seamlessly tileable noise (plain, long-wavelength, or elongated
along an orientation field like collagen); :func:`stamp_nuclei` draws soft elliptical nuclei
and :func:`clustered_points` scatters their centres.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft
from scipy import ndimage

from .arrays import F32, FloatArray, normalise


class Spectrum:
    """Frequency grid of the ``rfft2`` of a square periodic image, for band-pass noise."""

    def __init__(self, size: int) -> None:
        self.size = size
        fy = np.fft.fftfreq(size).astype(F32)[:, None]
        fx = np.fft.rfftfreq(size).astype(F32)[None, :]
        self.freq = np.sqrt(fy * fy + fx * fx)
        self.angle = np.arctan2(fy, fx)

    def band(self, wavelength: float, bandwidth: float) -> FloatArray:
        """Log-Gaussian band-pass filter around ``1 / wavelength``."""
        out = np.maximum(self.freq, F32(1e-6)) * F32(wavelength)
        np.log(out, out=out)
        out *= F32(1.0 / bandwidth)
        np.square(out, out=out)
        out *= F32(-0.5)
        np.exp(out, out=out)
        out[0, 0] = 0.0
        return out

    def white(self, rng: np.random.Generator) -> NDArray[np.complex64]:
        """Spectrum of white Gaussian noise."""
        return sp_fft.rfft2(rng.standard_normal((self.size, self.size), dtype=F32))

    def inverse(self, spec: NDArray[np.complex64]) -> FloatArray:
        """Image of a spectrum, normalised to zero mean and unit variance."""
        out = sp_fft.irfft2(spec, s=(self.size, self.size), overwrite_x=True)
        return normalise(out)

    def noise(
        self, rng: np.random.Generator, wavelength: float, bandwidth: float = 0.6
    ) -> FloatArray:
        """Seamlessly tileable band-pass noise of unit variance and the given wavelength (px)."""
        spec = self.white(rng)
        spec *= self.band(wavelength, bandwidth)
        return self.inverse(spec)

    def smooth_noise(self, rng: np.random.Generator, wavelength: float, factor: int) -> FloatArray:
        """Like :meth:`noise` for long wavelengths: made ``factor`` times smaller, upsampled."""
        small = Spectrum(self.size // factor).noise(rng, wavelength / factor, 0.6)
        big = ndimage.zoom(small, factor, order=1, mode="grid-wrap", grid_mode=True)
        return normalise(big.astype(F32, copy=False))

    def oriented(
        self, rng: np.random.Generator, wavelength: float, orientation: FloatArray
    ) -> FloatArray:
        """Tileable noise elongated along a spatially varying ``orientation`` (radians).

        Four directionally filtered versions of one white noise are blended with weights that
        follow the orientation field, which gives long wavy streaks like collagen bundles.
        """
        spec = self.white(rng)
        spec *= self.band(wavelength, 0.55)
        acc = np.zeros((self.size, self.size), dtype=F32)
        weight = np.empty((self.size, self.size), dtype=F32)
        for k in range(4):
            theta = k * math.pi / 4
            # streaks along theta have their energy at frequencies perpendicular to it
            wedge = np.sin(self.angle - F32(theta + math.pi / 2))
            wedge *= F32(1.0 / 0.3)
            np.square(wedge, out=wedge)
            wedge *= F32(-0.5)
            np.exp(wedge, out=wedge)
            part = self.inverse(spec * wedge)
            del wedge
            # weights max(0, cos(2 (orientation - theta)))**2 sum to 1 over the 4 directions
            np.subtract(orientation, F32(theta), out=weight)
            weight *= F32(2.0)
            np.cos(weight, out=weight)
            np.maximum(weight, F32(0.0), out=weight)
            np.square(weight, out=weight)
            part *= weight
            acc += part
            del part
        return normalise(acc)


def stamp_nuclei(
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
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(F32)
        yy -= F32(cy - math.floor(cy))
        xx -= F32(cx - math.floor(cx))
        c, s = math.cos(theta), math.sin(theta)
        u = xx * F32(c) + yy * F32(s)
        v = yy * F32(c) - xx * F32(s)
        d = np.sqrt((u / F32(rx)) ** 2 + (v / F32(ry)) ** 2)
        stamp = np.clip((1.0 - d) * F32(min(rx, ry)) + F32(0.5), 0.0, 1.0) * F32(value)
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


def clustered_points(
    rng: np.random.Generator, size: int, n: int, n_clusters: int, spread: float
) -> NDArray[np.float64]:
    """``n`` points in ``[0, size)^2``: half around random cluster centres, half uniform."""
    n_c = n // 2
    centres = rng.uniform(0, size, (n_clusters, 2))
    pick = rng.integers(0, n_clusters, n_c)
    clustered = centres[pick] + rng.normal(0, spread, (n_c, 2))
    uniform = rng.uniform(0, size, (n - n_c, 2))
    return np.concatenate([clustered, uniform]) % size
