"""Tile rendering of synthetic slides: any tile of any level as RGB, and its JPEG bytes.

:class:`Renderer` combines the layout, the texture, the markers and the glass background
into one tile, deterministically and thread-safely, and JPEG-encodes it.
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from .arrays import F32, ByteArray, dihedral, hash_int, to_uint8
from .layout import SlideLayout, interp_axis
from .markers import Marker
from .stain import ink_to_rgb8
from .texture import Texture

#: Chroma subsampling of the JPEG tiles (tifffile's default for RGB).
SUBSAMPLING = (2, 2)


class Renderer:
    """Renders and JPEG-encodes any tile of any level; thread-safe and deterministic."""

    #: Jitter of the tissue edge by the local texture darkness (ragged edges).
    JITTER = 0.2

    def __init__(
        self,
        layout: SlideLayout,
        texture: Texture,
        markers: list[Marker],
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
        self.ink_ref = F32(255.0 - float(texture.mean_rgb.mean()))
        # every flip/rotation of every glass tile, and its JPEG (glass tiles are the majority)
        self.glass = [np.ascontiguousarray(dihedral(g, k)) for g in glass for k in range(8)]
        self.glass_jpeg = [self.encode(g) for g in self.glass]

    def encode(self, arr: ByteArray) -> bytes:
        """JPEG bytes of an RGB tile (YCbCr, :data:`SUBSAMPLING` chroma subsampling)."""
        return bytes(
            imagecodecs.jpeg8_encode(
                arr,
                level=self.quality,
                colorspace="RGB",
                outcolorspace="YCBCR",
                subsampling=SUBSAMPLING,
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
        glass_index = hash_int(self.seed, ty, tx, 11 + level) % len(self.glass)
        grid, cell = self.layout.level(level)
        scale = (1 << level) / cell
        iy, wy0, wy1 = interp_axis(py0, size, scale, grid.shape[1])
        ix, wx0, wx1 = interp_axis(px0, size, scale, grid.shape[2])
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
            alpha = ink @ np.full(3, 1.0 / 3.0, dtype=F32)  # darkness jitters the edge
            alpha -= self.ink_ref
            alpha *= F32(1.0 / 80.0)
            np.clip(alpha, -1.0, 1.0, out=alpha)
            alpha *= F32(self.JITTER)
            alpha += fields[0]
            alpha -= F32(0.5)
            alpha *= F32(sharp)
            alpha += F32(0.5)
            np.clip(alpha, 0.0, 1.0, out=alpha)
            glass = np.subtract(F32(255.0), self.glass[glass_index], dtype=F32)
            ink -= glass
            ink *= alpha[..., None]
            ink += glass
        return ink_to_rgb8(ink)


def glass_tiles(rng: np.random.Generator, tile: int) -> list[ByteArray]:
    """Near-white glass with slight sensor noise (4 tiles, used under 8 flips each)."""
    base = np.array([245.0, 244.0, 242.0]) + rng.uniform(-2.0, 2.0, 3)
    return [to_uint8(base + rng.normal(0.0, 1.2, (tile, tile, 3))) for _ in range(4)]
