"""The one reader protocol every slide source implements, and pixel normalisation.

Output of every reader is RGB uint8 in (y, x, c) order:

- RGBA is composited on white (the slide background): ``rgb * a/255 + 255 * (1 - a/255)``,
  rounded to nearest; fully opaque pixels are unchanged.
- Grayscale (2-D, or one channel) is expanded to three equal channels; gray+alpha is composited.
- 16-bit samples are scaled to 8 bits by ``round(v * 255 / 65535)`` (so 0 -> 0, 65535 -> 255);
  other integer widths likewise by their maximum; floats are taken as [0, 1] and clipped.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SlideReadError


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in pixels and downsample factor relative to level 0."""

    width: int
    height: int
    downsample: float


@dataclass(frozen=True)
class SlideInfo:
    """What ``wsi-patchgd info`` prints about a slide or store."""

    source: str
    format: str
    reader: str
    vendor: str
    levels: tuple[Level, ...]
    mpp: float | None
    objective_power: float | None
    properties: dict[str, Any] = field(default_factory=dict)


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Normalise an image array of any common layout to (H, W, 3) RGB uint8.

    Args:
        arr: (H, W), (H, W, 1), (H, W, 2) gray+alpha, (H, W, 3) or (H, W, 4) array of any
            integer or float dtype.

    Returns:
        A C-contiguous (H, W, 3) uint8 array (the input itself when already so).

    Raises:
        ValueError: for shapes that are not an image.
    """
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"not an image array: shape {a.shape}")
    a = _to_uint8(a)
    c = a.shape[2]
    if c in (2, 4):
        color, alpha = a[:, :, : c - 1], a[:, :, c - 1 :]
        if alpha.min() < 255:
            af = alpha.astype(np.uint32)
            color = ((color.astype(np.uint32) * af + 255 * (255 - af) + 127) // 255).astype(
                np.uint8
            )
        a = color
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def hwc_to_chw(a: np.ndarray, rows: int = 64) -> np.ndarray:
    """(H, W, C) -> C-contiguous (C, H, W), a band of ``rows`` rows at a time (a cache-sized
    transposed copy is several times faster than one over a whole region)."""
    out = np.empty((a.shape[2], a.shape[0], a.shape[1]), a.dtype)
    for i in range(0, a.shape[0], rows):
        out[:, i : i + rows] = a[i : i + rows].transpose(2, 0, 1)
    return out


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        v = np.clip(a, 0, info.max).astype(np.float64)
        return np.floor(v * 255.0 / info.max + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {a.dtype}")


class SlideReader(abc.ABC):
    """A pyramidal image opened for reading.

    Subclasses fill ``levels`` (level 0 first), ``mpp``, ``objective_power``, ``vendor`` and
    ``properties`` in ``__init__`` and implement :meth:`_read`.
    """

    name: str = "base"
    source: str
    format: str
    vendor: str = "unknown"
    levels: tuple[Level, ...] = ()
    mpp: float | None = None
    objective_power: float | None = None
    properties: dict[str, Any]

    @abc.abstractmethod
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read an in-bounds region of ``level`` as (h, w, 3) uint8."""

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a region of one level, in that level's pixel coordinates.

        Args:
            level: pyramid level index.
            x, y: top-left corner in the level's pixels (may be outside the image).
            width, height: region size in pixels.

        Returns:
            (height, width, 3) RGB uint8; parts outside the image are white (255).

        Raises:
            SlideReadError: the level does not exist or the data cannot be decoded.
        """
        if not 0 <= level < len(self.levels):
            raise SlideReadError(
                f"{self.source}: level {level} does not exist (levels 0..{len(self.levels) - 1})"
            )
        lv = self.levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lv.width), min(y + height, lv.height)
        if x0 == x and y0 == y and x1 == x + width and y1 == y + height:
            return self._read_checked(level, x, y, width, height)
        out = np.full((height, width, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_checked(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    def read_region_chw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """:meth:`read_region` as a C-contiguous (3, height, width) array (what stores hold).

        Readers that decode tile by tile override :meth:`_read_chw` to transpose each decoded
        tile while it is in cache, instead of the whole region afterwards.
        """
        lv = self.levels[level] if 0 <= level < len(self.levels) else None
        if lv is None or x < 0 or y < 0 or x + width > lv.width or y + height > lv.height:
            return np.ascontiguousarray(
                self.read_region(level, x, y, width, height).transpose(2, 0, 1)
            )
        try:
            out = self._read_chw(level, x, y, width, height)
        except SlideReadError:
            raise
        except Exception as exc:
            raise self._decode_error(level, x, y, width, height, exc) from exc
        if out is None:
            out = hwc_to_chw(self._read_checked(level, x, y, width, height))
        return out

    def _read_chw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """An in-bounds region as (3, h, w) uint8, or None where only :meth:`_read` applies."""
        return None

    def _decode_error(
        self, level: int, x: int, y: int, w: int, h: int, exc: Exception
    ) -> SlideReadError:
        return SlideReadError(
            f"{self.source}: cannot read level {level} region x={x} y={y} {w}x{h} "
            f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt"
        )

    def _read_checked(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            return self._read(level, x, y, w, h)
        except SlideReadError:
            raise
        except Exception as exc:
            raise self._decode_error(level, x, y, w, h, exc) from exc

    def best_level_for(self, max_size: int) -> int:
        """The finest level whose longer side is <= max_size (the coarsest if none is)."""
        for i, lv in enumerate(self.levels):
            if max(lv.width, lv.height) <= max_size:
                return i
        return len(self.levels) - 1

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An RGB thumbnail whose longer side is at most ``max_size``."""
        from skimage.transform import resize

        level = self.best_level_for(max_size)
        lv = self.levels[level]
        img = self.read_region(level, 0, 0, lv.width, lv.height)
        scale = max_size / max(lv.width, lv.height)
        if scale < 1:
            shape = (max(1, round(lv.height * scale)), max(1, round(lv.width * scale)))
            img = (resize(img, shape, order=1, anti_aliasing=True) * 255 + 0.5).astype(np.uint8)
        return img

    def info(self) -> SlideInfo:
        """Metadata summary (no pixels read)."""
        return SlideInfo(
            source=self.source,
            format=self.format,
            reader=self.name,
            vendor=self.vendor,
            levels=self.levels,
            mpp=self.mpp,
            objective_power=self.objective_power,
            properties=dict(self.properties),
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
