"""Tissue detection on slide thumbnails, and per-patch tissue fractions.

:func:`detect_tissue` turns a low-resolution RGB thumbnail of a slide (H&E or IHC) into a boolean
tissue mask; :func:`patch_tissue_fractions` turns such a mask into the exact tissue fraction of
every patch of a pyramid level's patch grid (what the sampler needs). The parameters of the
detector live in a frozen :class:`TissueParams` that is recorded in every store
(:meth:`TissueParams.to_dict`), so a mask can always be reproduced.

The method (``"hsv-otsu"``), step by step, and why:

1. **Colour space.** The image is converted to HSV. Glass is bright and grey (saturation near 0);
   stained tissue has colour. Brightness alone fails on pale tissue (fat, loose stroma) and on
   grey glass beyond the coverslip edge, which is darker than the slide but not stained.
2. **Saturation threshold.** Otsu's threshold on saturation, clipped to ``[saturation_floor,
   saturation_ceiling]`` (default ``[0.06, 0.10]``). The floor matters on almost-empty slides:
   Otsu then splits the glass noise (measured on the glass-only tiles: 99th percentile of
   saturation 0.01-0.05) and would turn it into tissue. The ceiling matters on thumbnails that
   are mostly tissue: Otsu then splits eosin from hematoxylin (thresholds of 0.2-0.4 on the
   tissue tiles) and would throw away pale tissue. Pixels brighter than ``max_brightness``
   (mean of R, G, B) are glass whatever their saturation.
3. **Ink, by colour.** H&E and IHC stains live in the blue-purple (hematoxylin, about
   250-330 degrees), pink (eosin, 300-350) and brown (DAB, 10-50) hues; ``stain_hue_ranges``
   defaults to 240-360 and 0-50 degrees. Coloured pixels outside it are marker ink (green pens
   measure 150-230 degrees, blue 200-230). Red ink shares eosin's hue but is far more
   saturated (median saturation 0.7-0.9 against 0.3-0.45 for eosin): red-hued pixels
   (345-20 degrees) with saturation at least ``red_pen_min_saturation`` are ink. Very dark
   pixels (HSV value below ``dark_value``, "black = very dark") are black or dark ink, folds,
   dust or slide edges.
4. **Marks as objects.** Out-of-focus ink on the coverslip fades into a pale pink or purple
   rim that has the colour of stain, so ink is handled as objects, not only as pixels. Ink
   blobs larger than ``pen_min_fraction`` of the image are pen marks and are grown through
   the pen-tinted pixels they touch (red hues, non-stain hues, value below
   ``pen_halo_value``). Every ink object larger than a speck (``min_object_fraction``) is then
   widened by ``pen_halo_ratio`` times its stroke width (estimated as ``2 * area /
   perimeter``; at least one pixel), so a sharp stroke on a thumbnail loses a pixel of rim
   and a blurred stroke seen at high magnification a proportionally wide one. Smaller ink (a
   dark nucleus, a speck of red blood) is only left out pixel by pixel.
5. **Hysteresis.** Faint stained pixels (saturation above ``hysteresis_ratio`` times the
   threshold, stain hue, not ink) count as tissue when they touch tissue. This keeps fat-cell
   membranes and loose connective tissue, which are barely stained, without lowering the
   threshold for isolated glass noise.
6. **Morphology.** A square closing (``closing_radius`` pixels) joins fragments across glass,
   never across ink marks; objects smaller than ``min_object_fraction`` of the image go
   (dust, debris); holes up to ``max_hole_fraction`` of the image are filled (fat cells,
   lumina) unless they are mostly ink (then only specks up to ``min_object_fraction`` are
   filled: dark nuclei) or lie in a mark; an optional opening (``opening_radius``) removes
   thin strands. Glass-edge lines are unsaturated or dark, so steps 2 and 3 already exclude
   them. Areas are fractions of the image so that the parameters hold for any thumbnail size.

Known limits: pen ink whose colour is that of a stain (dark purple marker, pale red ink
without a saturated core) and thin strokes of it can pass as tissue; at high magnification
fat is detected through its membranes only (the lipid vacuoles are empty glass-white).

The defaults were tuned on the labelled real tiles and thumbnails of the test data (histolab's
fixtures): tissue tiles, glass-only tiles, red, green and blue pen marks on glass and on
tissue, and a glass edge; the per-tile fractions are printed by ``pytest -s
tests/test_tissue.py``. A 2000 x 2000 thumbnail takes about half a second of one CPU core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

__all__ = [
    "TissueParams",
    "detect_tissue",
    "patch_tissue_fractions",
    "summed_area_table",
    "tissue_fraction",
]

_METHODS = ("hsv-otsu",)
_CONN8 = np.ones((3, 3), dtype=bool)

# Fields holding a number in [0, 1].
_UNIT_FIELDS = (
    "saturation_floor",
    "saturation_ceiling",
    "hysteresis_ratio",
    "max_brightness",
    "dark_value",
    "dark_max_saturation",
    "red_pen_min_saturation",
    "pen_min_fraction",
    "pen_halo_value",
    "min_object_fraction",
    "max_hole_fraction",
)


def _hue_pair(value: Any, name: str) -> tuple[float, float]:
    """Validate one ``(lo, hi)`` hue pair in degrees."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"TissueParams.{name} must be a (lo, hi) pair of hues, got {value!r}")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise ValueError(f"TissueParams.{name}: hues must be numbers, got {value!r}")
        if not 0.0 <= float(x) <= 360.0:
            raise ValueError(f"TissueParams.{name}: hues must lie in [0, 360], got {value!r}")
        out.append(float(x))
    return out[0], out[1]


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`detect_tissue`, recorded in every store (see :meth:`to_dict`).

    Hues are in degrees ``[0, 360]``; saturation, value and brightness in ``[0, 1]``. A hue
    range ``(lo, hi)`` with ``lo > hi`` wraps through 0 degrees (red). The module docstring
    explains each step and how the defaults were chosen.

    Attributes:
        method: Detection method; only ``"hsv-otsu"`` exists.
        saturation_floor: Lowest saturation threshold ever used (stops Otsu from splitting
            glass noise on an almost-empty image).
        saturation_ceiling: Highest saturation threshold ever used (stops Otsu from splitting
            the stains of an image that is all tissue).
        use_otsu: Pick the threshold with Otsu's method, clipped to ``[saturation_floor,
            saturation_ceiling]``; if ``False``, ``saturation_floor`` is the threshold.
        hysteresis_ratio: Pixels with stain hue and saturation at least this fraction of the
            threshold are tissue when connected to tissue; 1 disables the hysteresis.
        max_brightness: Pixels whose mean of R, G, B (in ``[0, 1]``) exceeds this are glass.
        dark_max_saturation: Dark pixels count as ink only when less saturated than this
            (black ink, folds) or red-hued (dark red ink); dark saturated purple pixels are
            dense haematoxylin (epidermis, tumour nests, lymphocyte aggregates): tissue.
        dark_value: Pixels whose HSV value (max of R, G, B) is below this are dark ink,
            folds, dust or edges, never tissue.
        stain_hue_ranges: Hue ranges of H&E and IHC stains; saturated pixels outside them
            are ink (green, blue, ...).
        red_pen_hue_range: Hue range of red marker ink.
        red_pen_min_saturation: Pixels in ``red_pen_hue_range`` at least this saturated are
            red ink.
        pen_min_fraction: Connected ink larger than this fraction of the image is a pen mark,
            grown through the tinted pixels it touches.
        pen_halo_value: Pen marks grow through connected pixels darker than this value (and
            through red or non-stain hues).
        pen_halo_ratio: Ink marks (pen marks and ink objects larger than
            ``min_object_fraction``) are widened by this times their stroke width, at least
            one pixel; 0 disables.
        min_object_fraction: Tissue objects smaller than this fraction of the image are
            removed; ink objects at least this large are marks, smaller ones specks.
        max_hole_fraction: Holes in tissue up to this fraction of the image are filled
            (holes that are mostly ink only up to ``min_object_fraction``).
        closing_radius: Half-width, in thumbnail pixels, of the square closing that joins
            tissue fragments; 0 disables.
        opening_radius: Half-width, in thumbnail pixels, of the square opening that removes
            thin strands; 0 (default) disables.

    Raises:
        ValueError: A value has the wrong type or lies outside its range (the message names
            the field).
    """

    method: str = "hsv-otsu"
    saturation_floor: float = 0.06
    saturation_ceiling: float = 0.10
    use_otsu: bool = True
    hysteresis_ratio: float = 0.5
    max_brightness: float = 0.92
    dark_value: float = 0.35
    dark_max_saturation: float = 0.3
    stain_hue_ranges: tuple[tuple[float, float], ...] = ((240.0, 360.0), (0.0, 50.0))
    red_pen_hue_range: tuple[float, float] = (345.0, 20.0)
    red_pen_min_saturation: float = 0.5
    pen_min_fraction: float = 0.002
    pen_halo_value: float = 0.6
    pen_halo_ratio: float = 0.1
    min_object_fraction: float = 0.001
    max_hole_fraction: float = 0.02
    closing_radius: int = 2
    opening_radius: int = 0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(
                f"TissueParams.method must be one of {list(_METHODS)}, got {self.method!r}"
            )
        if not isinstance(self.use_otsu, (bool, np.bool_)):
            raise ValueError(f"TissueParams.use_otsu must be true or false, got {self.use_otsu!r}")
        object.__setattr__(self, "use_otsu", bool(self.use_otsu))
        for name in _UNIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"TissueParams.{name} must be a number, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"TissueParams.{name} must lie in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.saturation_floor > self.saturation_ceiling:
            raise ValueError(
                "TissueParams.saturation_floor must not exceed saturation_ceiling, got "
                f"{self.saturation_floor} > {self.saturation_ceiling}"
            )
        ratio = self.pen_halo_ratio
        if (
            isinstance(ratio, (bool, np.bool_))
            or not isinstance(ratio, (int, float, np.integer, np.floating))
            or not (math.isfinite(float(ratio)) and float(ratio) >= 0)
        ):
            raise ValueError(
                f"TissueParams.pen_halo_ratio must be a non-negative number, got {ratio!r}"
            )
        object.__setattr__(self, "pen_halo_ratio", float(ratio))
        for name in ("closing_radius", "opening_radius"):
            value = getattr(self, name)
            if (
                isinstance(value, (bool, np.bool_))
                or not isinstance(value, (int, np.integer))
                or value < 0
            ):
                raise ValueError(
                    f"TissueParams.{name} must be a non-negative integer, got {value!r}"
                )
            object.__setattr__(self, name, int(value))
        ranges = self.stain_hue_ranges
        if isinstance(ranges, (str, bytes, Mapping)) or not hasattr(ranges, "__iter__"):
            raise ValueError(
                f"TissueParams.stain_hue_ranges must be a list of (lo, hi) pairs, got {ranges!r}"
            )
        pairs = tuple(_hue_pair(r, "stain_hue_ranges") for r in ranges)
        if not pairs:
            raise ValueError("TissueParams.stain_hue_ranges must hold at least one (lo, hi) pair")
        object.__setattr__(self, "stain_hue_ranges", pairs)
        object.__setattr__(
            self, "red_pen_hue_range", _hue_pair(self.red_pen_hue_range, "red_pen_hue_range")
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists), as recorded in a store.

        Returns:
            A dict with one entry per field; :meth:`from_dict` inverts it.
        """
        d = asdict(self)
        d["stain_hue_ranges"] = [list(r) for r in self.stain_hue_ranges]
        d["red_pen_hue_range"] = list(self.red_pen_hue_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TissueParams:
        """Build parameters from :meth:`to_dict` output; missing keys take their defaults.

        Args:
            d: Mapping of field names to values, e.g. parsed from JSON.

        Returns:
            The parameters.

        Raises:
            ValueError: A key is not a field of :class:`TissueParams` (the message names it),
                or a value is invalid.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"TissueParams.from_dict expects a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(
                    f"unknown TissueParams key {key!r}; known keys: {', '.join(known)}"
                )
        return cls(**dict(d))


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an image; return it as (H, W, 3) uint8, compositing RGBA on white."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"detect_tissue expects a uint8 image, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"detect_tissue expects an (H, W, 3) RGB or (H, W, 4) RGBA image, got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"detect_tissue expects a non-empty image, got shape {arr.shape}")
    if arr.shape[2] == 3:
        return arr
    alpha = arr[..., 3:4].astype(np.float32) / np.float32(255.0)
    out = arr[..., :3].astype(np.float32) * alpha + np.float32(255.0) * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation, value and mean brightness of a uint8 RGB image (float32)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = (mx - mn).astype(np.float32)
    rf, gf, bf = (c.astype(np.float32) for c in (r, g, b))
    mxf = mx.astype(np.float32)
    grey = delta == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.float32(60.0) / delta
        hue = np.where(
            mx == r, (gf - bf) * k, np.where(mx == g, (bf - rf) * k + 120, (rf - gf) * k + 240)
        )
        sat = delta / mxf
    hue[grey] = 0
    hue %= 360
    sat[grey] = 0
    val = mxf / np.float32(255.0)
    bright = (rf + gf + bf) / np.float32(3 * 255.0)
    return hue.astype(np.float32, copy=False), sat, val, bright


def _in_hue(hue: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Whether each hue lies in one of ``ranges`` (a pair with ``lo > hi`` wraps through 0)."""
    out = np.zeros(hue.shape, dtype=bool)
    for lo, hi in ranges:
        if lo <= hi:
            out |= (hue >= lo) & (hue <= hi)
        else:
            out |= (hue >= lo) | (hue <= hi)
    return out


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected objects of fewer than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=_CONN8)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= min_size
    keep[0] = False
    return keep[labels]


def _grow(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Seeds plus the pixels of ``allowed`` 8-connected to a seed (reconstruction)."""
    labels, n = ndi.label(allowed | seeds, structure=_CONN8)
    hit = np.zeros(n + 1, dtype=bool)
    hit[labels[seeds]] = True
    hit[0] = False
    return hit[labels]


def _fill_holes(mask: np.ndarray, ink: np.ndarray, max_size: int, max_ink_size: int) -> np.ndarray:
    """Fill holes: background regions (4-connected) that do not touch the image border.

    A hole is filled when it has at most ``max_size`` pixels, or at most ``max_ink_size``
    pixels when at least half of it is ink.
    """
    if max_size <= 0 and max_ink_size <= 0:
        return mask
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)
    inked = np.bincount(flat, weights=ink.ravel(), minlength=n + 1)
    fill = np.where(2 * inked < area, area <= max_size, area <= max_ink_size)
    fill[0] = False
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[border] = False
    return mask | fill[labels]


def _pen_halo(pen: np.ndarray, ratio: float) -> np.ndarray:
    """Pixels within ``ratio`` x stroke width of a pen blob, outside it (the blurred rim).

    The stroke width of a blob is ``2 * area / perimeter`` (exact for a long band), so a
    sharp stroke on a thumbnail gets a rim of a pixel or so, while a blurred stroke seen at
    high magnification gets a proportionally wide one. Distances are chessboard distances
    (a separable square dilation, whose cost does not depend on the width).
    """
    labels, n = ndi.label(pen, structure=_CONN8)
    halo = np.zeros(pen.shape, dtype=bool)
    if n == 0:
        return halo
    area = np.bincount(labels.ravel(), minlength=n + 1)
    edge = pen & ~ndi.binary_erosion(pen, structure=_CONN8, border_value=1)
    perim = np.bincount(labels[edge], minlength=n + 1)
    reach = np.maximum(np.rint(ratio * 2.0 * area / np.maximum(perim, 1)), 1).astype(np.int64)
    h, w = pen.shape
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        r = int(reach[idx])
        if sl is None or r < 1:
            continue
        y0, y1 = max(sl[0].start - r, 0), min(sl[0].stop + r, h)
        x0, x1 = max(sl[1].start - r, 0), min(sl[1].stop + r, w)
        blob = (labels[y0:y1, x0:x1] == idx).view(np.uint8)
        halo[y0:y1, x0:x1] |= ndi.maximum_filter(blob, size=2 * r + 1, mode="constant") > 0
    return halo & ~pen


def _otsu(sat: np.ndarray) -> float:
    """Otsu's threshold of saturation values in [0, 1], from a 256-bin histogram."""
    q = np.minimum((sat * np.float32(255.0) + np.float32(0.5)).astype(np.uint8), 255)
    counts = np.bincount(q.ravel(), minlength=256)
    if np.count_nonzero(counts) < 2:
        return 0.0  # a single saturation value: nothing to split
    centers = np.arange(256, dtype=np.float64) / 255.0
    return float(threshold_otsu(hist=(counts, centers)))


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Closing with a (2r+1)-square (separable), edges replicated so it never shrinks."""
    size = 2 * radius + 1
    u = mask.view(np.uint8)
    u = ndi.maximum_filter(u, size=size, mode="nearest")
    u = ndi.minimum_filter(u, size=size, mode="nearest")
    return u.astype(bool)


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening with a (2r+1)-square (separable), edges replicated."""
    size = 2 * radius + 1
    u = mask.view(np.uint8)
    u = ndi.minimum_filter(u, size=size, mode="nearest")
    u = ndi.maximum_filter(u, size=size, mode="nearest")
    return u.astype(bool)


def detect_tissue(rgb: np.ndarray, params: TissueParams | None = None) -> np.ndarray:
    """Tissue mask of a low-resolution slide image (a thumbnail).

    Args:
        rgb: ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8`` image. RGBA is composited on
            white (slide background): ``rgb * a + 255 * (1 - a)``.
        params: Detection parameters; ``None`` means ``TissueParams()``.

    Returns:
        ``(H, W)`` boolean mask, ``True`` on tissue.

    Raises:
        ValueError: The image is not ``uint8``, not ``(H, W, 3)`` / ``(H, W, 4)``, or empty;
            or ``params`` is not a :class:`TissueParams`.
    """
    p = TissueParams() if params is None else params
    if not isinstance(p, TissueParams):
        raise ValueError(f"detect_tissue: params must be TissueParams, got {type(p).__name__}")
    img = _as_rgb(rgb)
    n = img.shape[0] * img.shape[1]
    hue, sat, val, bright = _hsv(img)

    # Glass: below the (clipped Otsu) saturation threshold, or too bright.
    thr = p.saturation_floor
    if p.use_otsu:
        thr = min(max(_otsu(sat), p.saturation_floor), p.saturation_ceiling)
    not_glass = bright <= p.max_brightness
    dark = val < p.dark_value
    coloured = ((sat > thr) & not_glass) | dark

    # Ink: non-stain hues, saturated red, anything very dark.
    stain = _in_hue(hue, p.stain_hue_ranges)
    red_hue = _in_hue(hue, (p.red_pen_hue_range,))
    black = dark & ((sat < p.dark_max_saturation) | red_hue)
    ink = coloured & (black | ~stain | (red_hue & (sat >= p.red_pen_min_saturation)))

    # Marks: ink objects larger than a speck (pen strokes, folds). The large ones are pen
    # marks, grown through the tinted rim they touch; all are widened by their blur.
    min_size = max(1, int(round(p.min_object_fraction * n)))
    pen = np.zeros_like(ink)
    if ink.any():
        labels, nlab = ndi.label(ink, structure=_CONN8)
        area = np.bincount(labels.ravel(), minlength=nlab + 1)
        area[0] = 0
        big = area >= max(2, int(round(p.pen_min_fraction * n)))
        if big.any():
            tinted = coloured & (~stain | red_hue | (val < p.pen_halo_value))
            pen = _grow(big[labels], tinted)
        pen |= (area >= min_size)[labels]
        if p.pen_halo_ratio > 0 and pen.any():
            pen |= _pen_halo(pen, p.pen_halo_ratio)
    blocked = ink | pen

    tissue = coloured & ~blocked
    if p.hysteresis_ratio < 1.0 and tissue.any():
        weak = (sat >= p.hysteresis_ratio * thr) & not_glass & stain & ~blocked
        tissue = _grow(tissue, weak)

    # Morphology: join fragments, drop specks, fill holes (not ink), drop thin strands.
    if p.closing_radius:
        # The closing bridges glass, not ink: thin pen strokes on tissue stay out.
        tissue = _close(tissue, p.closing_radius) & ~pen
    tissue = _remove_small(tissue, min_size)
    tissue = _fill_holes(tissue, ink, int(round(p.max_hole_fraction * n)), min_size) & ~pen
    if p.opening_radius:
        tissue = _remove_small(_open(tissue, p.opening_radius), min_size)
    return np.ascontiguousarray(tissue, dtype=bool)


def tissue_fraction(rgb: np.ndarray, params: TissueParams | None = None) -> float:
    """Fraction of an image's pixels that are tissue.

    Args:
        rgb: ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8`` image.
        params: Detection parameters; ``None`` means ``TissueParams()``.

    Returns:
        The fraction, in ``[0, 1]``.

    Raises:
        ValueError: The image is not ``uint8``, not ``(H, W, 3)`` / ``(H, W, 4)``, or empty;
            or ``params`` is not a :class:`TissueParams`.
    """
    mask = detect_tissue(rgb, params)
    return float(np.count_nonzero(mask)) / float(mask.size)


def _edge_interp(table: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of a summed-area table along ``axis`` at positions ``pos``.

    ``pos`` must already be clipped to ``[0, table.shape[axis] - 1]``.
    """
    size = table.shape[axis] - 1
    lo = np.minimum(np.floor(pos).astype(np.int64), max(size - 1, 0))
    frac = pos - lo
    hi = np.minimum(lo + 1, size)
    a = np.take(table, lo, axis=axis)
    b = np.take(table, hi, axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    f = frac.reshape(shape)
    return a * (1.0 - f) + b * f


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """``sat[a, b] = sum(mask[:a, :b])`` as float64, shape ``(h + 1, w + 1)`` (exact: the
    sums are formed in int64). Pass it to :func:`patch_tissue_fractions` when one mask serves
    many levels."""
    m = np.asarray(mask)
    mh, mw = m.shape
    sat = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    np.cumsum(np.cumsum(m != 0, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    return sat.astype(np.float64)


def patch_tissue_fractions(
    mask: np.ndarray,
    scale: float,
    patch_size: int,
    grid_shape: tuple[int, int],
    sat: np.ndarray | None = None,
) -> np.ndarray:
    """Tissue fraction of every patch of a level's non-overlapping patch grid.

    The mask is a function that is constant on each mask pixel (pixel ``(r, c)`` covers
    ``[r, r + 1) x [c, c + 1)``) and 0 outside the mask. Patch ``(i, j)`` covers level pixels
    ``[i P, (i + 1) P) x [j P, (j + 1) P)``, i.e. the box ``[i P s, (i + 1) P s) x
    [j P s, (j + 1) P s)`` in mask pixels; its fraction is the exact mean of the mask over
    that box (area-weighted at fractional edges). The integral is read from a summed-area
    table, which is bilinear in fractional coordinates, so the cost is one cumulative sum of
    the mask plus O(grid size).

    Args:
        mask: 2-D boolean tissue mask at some coarse resolution.
        scale: Mask pixels per level pixel (``1/16`` when the mask is 16x coarser than the
            level; above 1 when the mask is finer).
        patch_size: Patch side ``P`` in level pixels.
        grid_shape: ``(n_h, n_w)`` patches; the grid may extend past the mask (that part
            counts as background).
        sat: :func:`summed_area_table` of ``mask``, if already computed.

    Returns:
        ``float32`` array of shape ``grid_shape`` with values in ``[0, 1]``.

    Raises:
        ValueError: ``mask`` is not 2-D, ``scale`` is not a positive finite number,
            ``patch_size`` is not a positive integer or ``grid_shape`` is not two
            non-negative integers.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"patch_tissue_fractions expects a 2-D mask, got shape {m.shape}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
        raise ValueError(f"patch_tissue_fractions: scale must be a number, got {scale!r}")
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"patch_tissue_fractions: scale must be positive and finite, got {scale}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
        raise ValueError(f"patch_tissue_fractions: patch_size must be an int, got {patch_size!r}")
    if patch_size < 1:
        raise ValueError(f"patch_tissue_fractions: patch_size must be >= 1, got {patch_size}")
    bad_grid = ValueError(
        f"patch_tissue_fractions: grid_shape must be two non-negative ints, got {grid_shape!r}"
    )
    try:
        gh, gw = grid_shape
    except (TypeError, ValueError):
        raise bad_grid from None
    for g in (gh, gw):
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 0:
            raise bad_grid
    n_h, n_w = int(gh), int(gw)
    out = np.zeros((n_h, n_w), dtype=np.float32)
    mh, mw = m.shape
    if n_h == 0 or n_w == 0 or mh == 0 or mw == 0:
        return out

    satf = summed_area_table(m) if sat is None else sat
    if satf.shape != (mh + 1, mw + 1):
        raise ValueError(f"patch_tissue_fractions: sat shape {satf.shape} != mask shape + 1")

    side = patch_size * s  # patch side in mask pixels
    ys = np.clip(np.arange(n_h + 1, dtype=np.float64) * side, 0.0, float(mh))
    xs = np.clip(np.arange(n_w + 1, dtype=np.float64) * side, 0.0, float(mw))
    rows = _edge_interp(satf, ys, axis=0)  # (n_h + 1, mw + 1)
    corners = _edge_interp(rows, xs, axis=1)  # (n_h + 1, n_w + 1)
    box = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    out[...] = np.clip(box / (side * side), 0.0, 1.0)
    return out
