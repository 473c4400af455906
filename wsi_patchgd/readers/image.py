"""Plain images (PNG, JPEG, BMP, WebP ...) through Pillow: one level, decoded once."""

from __future__ import annotations

import os

import numpy as np

from ..errors import SlideReadError
from ..io import StorageOptions, filesystem
from .base import Level, SlideReader, to_rgb_uint8


class ImageReader(SlideReader):
    """A single-level image that Pillow decodes (kept in memory: for canvas-size images)."""

    name = "pillow"

    def __init__(
        self, path: str | os.PathLike[str], storage_options: StorageOptions | None = None
    ) -> None:
        from PIL import Image, UnidentifiedImageError

        self.source = str(path)
        fs, fspath = filesystem(self.source, storage_options)
        try:
            with fs.open(fspath, "rb") as fh, Image.open(fh, formats=None) as im:
                im.load()
                self.format = (im.format or "image").lower()
                arr = np.asarray(im)
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
                elif im.mode.startswith("I;16") or im.mode == "I":  # 16-bit gray
                    arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        except Image.DecompressionBombError as exc:  # refused before decoding anything
            raise SlideReadError(
                f"{self.source}: {str(exc).rstrip('.')}; a plain image this large "
                "is decoded into memory at once: convert it into a pyramidal tiled TIFF first"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = (
                "not an image format Pillow knows"
                if isinstance(exc, UnidentifiedImageError)
                else str(exc)
            )
            raise SlideReadError(f"{self.source}: {reason}") from exc
        self._rgb = to_rgb_uint8(arr)
        h, w = self._rgb.shape[:2]
        self.levels = (Level(w, h, 1.0),)
        self.vendor = "image"
        self.properties = {"image.mode": str(arr.dtype)}

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._rgb[y : y + height, x : x + width]
