"""The H&E stain model of synthetic slides: Beer-Lambert colour of stain concentrations.

Colours are handled as "ink" (``255 - rgb``) so that darkening and blending are
multiplications; this module turns haematoxylin/eosin concentration maps into RGB and ink
back into uint8 RGB.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .arrays import F32, ByteArray, FloatArray, to_uint8

#: Brightness of unstained tissue (light through the slide), close to the glass.
WHITE = 247.0

# Optical density of one unit of stain per RGB channel (Beer-Lambert), tuned to look like H&E.
HAEMATOXYLIN = np.array([0.80, 0.95, 0.42], dtype=F32)
EOSIN = np.array([0.10, 0.95, 0.42], dtype=F32)
HYPERCHROMATIC = np.array([0.85, 1.10, 0.62], dtype=F32)


def ink_to_rgb8(ink: FloatArray) -> ByteArray:
    """uint8 RGB of an "ink" image (``255 - rgb``, float32), consuming ``ink``."""
    np.subtract(F32(255.5), ink, out=ink)
    np.clip(ink, 0.0, 255.0, out=ink)
    return ink.astype(np.uint8, order="C")


def stain_rgb(
    h: FloatArray, e: FloatArray, h_vec: NDArray[np.float32] = HAEMATOXYLIN
) -> FloatArray:
    """RGB (float, 0-255) of haematoxylin/eosin concentration maps (Beer-Lambert)."""
    od = h[..., None] * h_vec
    od += e[..., None] * EOSIN
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= F32(WHITE)
    return od


def stain_rgb8(h: FloatArray, e: FloatArray, rows: int = 256) -> ByteArray:
    """Like :func:`stain_rgb` but uint8 and row block by row block (bounded memory)."""
    out = np.empty((*h.shape, 3), dtype=np.uint8)
    for y in range(0, h.shape[0], rows):
        out[y : y + rows] = to_uint8(stain_rgb(h[y : y + rows], e[y : y + rows]))
    return out
