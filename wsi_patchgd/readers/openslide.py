"""Vendor formats through OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel)."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..errors import SlideReadError
from .base import Level, SlideReader, to_rgb_uint8


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


class OpenSlideReader(SlideReader):
    """Any format OpenSlide reads (Aperio, Hamamatsu, MIRAX, Leica, Ventana, generic TIFF ...).

    ``read_region`` goes through ``openslide.OpenSlide.read_region`` (RGBA, composited on white).
    """

    name = "openslide"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import openslide

        self.source = str(path)
        try:
            self._slide = openslide.OpenSlide(self.source)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideReadError(f"{self.source}: not a format OpenSlide reads ({exc})") from exc
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"{self.source}: OpenSlide cannot open it ({exc})") from exc
        props = dict(self._slide.properties)
        self.properties = props
        self.vendor = props.get("openslide.vendor", "unknown")
        self.format = self.vendor
        self.levels = tuple(
            Level(int(w), int(h), float(d))
            for (w, h), d in zip(
                self._slide.level_dimensions, self._slide.level_downsamples, strict=True
            )
        )
        self.mpp = _float(props.get("openslide.mpp-x"))
        self.objective_power = _float(props.get("openslide.objective-power"))
        self._lock = threading.Lock()

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.levels[level].downsample
        loc = (int(round(x * ds)), int(round(y * ds)))
        img = self._slide.read_region(loc, level, (width, height))
        return to_rgb_uint8(np.asarray(img))

    def close(self) -> None:
        self._slide.close()
