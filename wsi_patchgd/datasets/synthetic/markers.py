"""Marker regions of synthetic slides: the small patches of nuclei that carry the label.

Each class has its own nuclei style (:func:`marker_image`); a marker's mean colour matches
the surrounding tissue so it hardly shows in a thumbnail. :func:`place_markers` puts the
markers inside tissue, apart from each other; :class:`Marker` pastes one onto a tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ...errors import ConfigError
from .arrays import F32, FloatArray, mean_pool, normalise
from .layout import SlideLayout
from .noise import stamp_nuclei
from .stain import HAEMATOXYLIN, HYPERCHROMATIC, WHITE, stain_rgb


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
        return _MarkerStyle(4.2, 0.08, (1.0, 1.3), (1.0, 1.2), 0.16, "sheet", HAEMATOXYLIN)
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
        h_vec=HYPERCHROMATIC if c % 2 else 0.5 * (HAEMATOXYLIN + HYPERCHROMATIC),
    )


@dataclass(frozen=True)
class MarkerImage:
    """A marker at one level, in ink: nuclei (premultiplied), their cover, region, paling."""

    nuclei_ink: FloatArray  # (h, w, 3) ink of the nuclei times their cover
    cover: FloatArray  # (h, w) opacity of the nuclei
    region: FloatArray  # (h, w) soft mask of the marker region
    gain: NDArray[np.float32]  # (3,) factor on the tissue ink inside the region

    def pooled(self, factor: int) -> MarkerImage:
        """The marker image mean-pooled by ``factor`` (at a coarser level)."""
        return MarkerImage(
            mean_pool(self.nuclei_ink, factor),
            mean_pool(self.cover, factor),
            mean_pool(self.region, factor),
            self.gain,
        )


def marker_image(
    rng: np.random.Generator,
    size: int,
    label: int,
    scale: float,
    target: NDArray[np.float32],
    dark: NDArray[np.float32],
) -> MarkerImage:
    """Level-0 nuclei overlay of one marker region of ``size`` x ``size`` px.

    The region keeps the surrounding tissue texture, paled by a per-channel factor so that,
    with the class-specific nuclei drawn over it, its mean colour equals ``target`` (the mean
    tissue colour): the region does not stand out in a thumbnail. Nuclei are as dark as
    ``dark`` (the texture's typical nucleus) for class 0 and darker for the other classes.
    """
    style = _marker_style(label)
    radius = style.radius * scale
    n = int(style.area * size * size * 0.8 / (math.pi * radius * radius))
    nuclei = np.zeros((size, size), dtype=F32)
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
    stamp_nuclei(
        nuclei, rng, pts, radius, style.radius_sd, style.aspect, style.darkness, angle, False
    )
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=F32), 1.0)
    chromatin = F32(0.8) + F32(0.2) * np.clip(normalise(fine), -2, 2)
    cover = np.clip(nuclei * F32(2.5), 0.0, 1.0)
    depth = np.maximum(nuclei, F32(0.8)) * chromatin
    eosin = np.full_like(depth, 0.12)
    # scale the stain so that the nuclei are darker than the texture's own (hyperchromatic)
    solid = cover > 0.9
    if solid.any():
        lum = float(stain_rgb(depth[solid], eosin[solid], style.h_vec).mean())
        goal = float(dark.mean()) * (1.15 if label == 0 else 0.75)
        ratio = math.log(max(goal, 5.0) / WHITE) / math.log(min(lum, WHITE - 1.0) / WHITE)
        depth *= F32(np.clip(ratio, 0.7, 3.0))
    ink = F32(255.0) - stain_rgb(depth, eosin, style.h_vec)
    # irregular blob-shaped region with a soft edge
    yy, xx = np.mgrid[0:size, 0:size].astype(F32)
    c = (size - 1) / 2.0
    theta = np.arctan2(yy - c, xx - c)
    wobble = np.ones_like(theta)
    for harmonic in (2, 3, 5):
        wobble += F32(0.06) * np.cos(harmonic * theta + F32(rng.uniform(0, 2 * math.pi)))
    rho = np.hypot(yy - c, xx - c) / (F32(0.47 * size) * wobble / wobble.max())
    region = np.clip((1.0 - rho) * F32(size * 0.06), 0.0, 1.0).astype(F32)
    cover *= region
    nuclei_ink = (ink * cover[..., None]).astype(F32)
    # pale the tissue under the region so that its mean colour stays that of normal tissue:
    # mean ink = gain * tissue_ink * (1 - phi) + mean nuclei ink  ==  tissue_ink
    weight = float(region.sum())
    phi_n = float((cover * region).sum()) / weight
    nuc_mean = (nuclei_ink * region[..., None]).sum(axis=(0, 1)) / weight
    tissue_ink = np.maximum(F32(255.0) - target, F32(1.0))
    gain = (tissue_ink - nuc_mean) / (tissue_ink * max(1e-3, 1.0 - phi_n))
    return MarkerImage(nuclei_ink, cover, region, np.clip(gain, 0.15, 1.0).astype(F32))


@dataclass(frozen=True)
class Marker:
    """One marker region: its level-0 box and its image at every level it shows on."""

    box: tuple[int, int, int, int]  # level 0 (y0, x0, y1, x1)
    levels: list[tuple[int, int, MarkerImage] | None]  # per level: (y0, x0, image)

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
        dst *= F32(1.0) - (F32(1.0) - img.gain) * img.region[src][..., None]
        dst *= F32(1.0) - img.cover[src][..., None]
        dst += img.nuclei_ink[src]


def place_markers(
    rng: np.random.Generator, layout: SlideLayout, height: int, width: int, sizes: list[int]
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
