"""Tissue detection on slide thumbnails, and per-patch tissue fractions.

PLACEHOLDER DOCSTRING (rewritten below once tuned).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology
from skimage.filters import threshold_otsu

__all__ = [
    "TissueParams",
    "detect_tissue",
    "patch_tissue_fractions",
    "tissue_fraction",
]

_METHODS = ("hsv-otsu",)


def _hue_ranges(value: Any, name: str) -> tuple[tuple[float, float], ...]:
    """Normalise a sequence of ``(lo, hi)`` hue pairs (degrees) to a tuple of float tuples."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"TissueParams.{name} must be a sequence of (lo, hi) pairs, got {value!r}")
    out = []
    for pair in value:
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ValueError(
                f"TissueParams.{name} must hold (lo, hi) pairs of hues in degrees, got {pair!r}"
            )
        lo, hi = (float(pair[0]), float(pair[1]))
        if not (0.0 <= lo <= 360.0 and 0.0 <= hi <= 360.0):
            raise ValueError(
                f"TissueParams.{name}: hues must lie in [0, 360] degrees, got ({lo}, {hi})"
            )
        out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`detect_tissue` (recorded in every store, see :meth:`to_dict`).

    Hues are in degrees ``[0, 360)``; saturation, value and brightness in ``[0, 1]``. A hue
    range ``(lo, hi)`` with ``lo > hi`` wraps through 0 degrees (red).

    Attributes:
        method: Detection method; only ``"hsv-otsu"`` exists.
        saturation_floor: Lowest saturation threshold ever used. Otsu's threshold on an
            almost-empty (glass only) image falls inside the glass noise; the floor stops it.
        saturation_ceiling: Highest saturation threshold ever used. Otsu's threshold on a
            thumbnail that is all tissue splits the stains from each other; the ceiling stops it.
        use_otsu: Whether to pick the saturation threshold with Otsu's method (clipped to
            ``[saturation_floor, saturation_ceiling]``); if ``False`` the floor is used.
        max_brightness: Pixels whose mean of R, G, B (scaled to ``[0, 1]``) is above this are
            glass, whatever their saturation.
        dark_value: Pixels whose HSV value (max of R, G, B) is below this are ink, dust,
            folds or slide edges, not tissue.
        stain_hue_ranges: Hue ranges of H&E and IHC stains (hematoxylin blue-purple, eosin
            pink, DAB brown). Saturated pixels outside them are pen ink (green, blue, ...).
        red_pen_hue_range: Hue range of red marker ink.
        red_pen_min_saturation: Pixels in ``red_pen_hue_range`` at least this saturated are red
            ink (eosin and blood are less saturated at thumbnail resolution).
        pen_component_fraction: A connected coloured blob whose pixels are more than this
            fraction ink (non-stain hue, red ink or dark) is a pen mark as a whole: its pale
            stain-coloured halo is dropped with it.
        min_object_fraction: Tissue objects smaller than this fraction of the image are removed.
        max_hole_fraction: Holes in tissue smaller than this fraction of the image are filled
            (fat cells, vessel lumina, nuclei removed as too dark).
        closing_radius: Radius in thumbnail pixels of the closing that joins tissue fragments.
        opening_radius: Radius in thumbnail pixels of the opening that removes thin structures
            (hairs, lines, thin ink strokes).
    """

    method: str = "hsv-otsu"
    saturation_floor: float = 0.08
    saturation_ceiling: float = 0.15
    use_otsu: bool = True
    max_brightness: float = 0.92
    dark_value: float = 0.35
    stain_hue_ranges: tuple[tuple[float, float], ...] = ((240.0, 360.0), (0.0, 50.0))
    red_pen_hue_range: tuple[float, float] = (345.0, 20.0)
    red_pen_min_saturation: float = 0.5
    pen_component_fraction: float = 0.4
    min_object_fraction: float = 0.001
    max_hole_fraction: float = 0.02
    closing_radius: int = 2
    opening_radius: int = 1

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(
                f"TissueParams.method must be one of {list(_METHODS)}, got {self.method!r}"
            )
        if not isinstance(self.use_otsu, bool):
            raise ValueError(f"TissueParams.use_otsu must be a bool, got {self.use_otsu!r}")
        unit = (
            "saturation_floor",
            "saturation_ceiling",
            "max_brightness",
            "dark_value",
            "red_pen_min_saturation",
            "pen_component_fraction",
            "min_object_fraction",
            "max_hole_fraction",
        )
        for name in unit:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"TissueParams.{name} must be a number, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"TissueParams.{name} must lie in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.saturation_floor > self.saturation_ceiling:
            raise ValueError(
                "TissueParams.saturation_floor must not exceed saturation_ceiling, got "
                f"{self.saturation_floor} > {self.saturation_ceiling}"
            )
        for name in ("closing_radius", "opening_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(
                    f"TissueParams.{name} must be a non-negative integer, got {value!r}"
                )
            object.__setattr__(self, name, int(value))
        object.__setattr__(
            self, "stain_hue_ranges", _hue_ranges(self.stain_hue_ranges, "stain_hue_ranges")
        )
        red = _hue_ranges([self.red_pen_hue_range], "red_pen_hue_range")
        object.__setattr__(self, "red_pen_hue_range", red[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists), as recorded in a store.

        Returns:
            A dict with one entry per field; :meth:`from_dict` inverts it.
        """
        d = asdict(self)
        d["stain_hue_ranges"] = [list(p) for p in self.stain_hue_ranges]
        d["red_pen_hue_range"] = list(self.red_pen_hue_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TissueParams:
        """Build parameters from :meth:`to_dict` output (missing keys take their defaults).

        Args:
            d: Mapping of field names to values, e.g. parsed from JSON.

        Returns:
            The parameters.

        Raises:
            ValueError: A key is not a field of :class:`TissueParams`, or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(
                    f"unknown TissueParams key {key!r}; known keys: {', '.join(sorted(known))}"
                )
        kwargs = dict(d)
        if "stain_hue_ranges" in kwargs:
            kwargs["stain_hue_ranges"] = _hue_ranges(kwargs["stain_hue_ranges"], "stain_hue_ranges")
        if "red_pen_hue_range" in kwargs:
            kwargs["red_pen_hue_range"] = _hue_ranges(
                [kwargs["red_pen_hue_range"]], "red_pen_hue_range"
            )[0]
        return cls(**kwargs)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an image and return it as (H, W, 3) uint8, compositing RGBA on white."""
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
    alpha = arr[..., 3:4].astype(np.float32) / 255.0
    out = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation, value and mean brightness of a uint8 RGB image, float32."""
    c = rgb.astype(np.float32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(
        mx == r,
        np.mod((g - b) / safe, 6.0),
        np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0).astype(np.float32)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0).astype(np.float32)
    val = mx / 255.0
    bright = (r + g + b) / (3.0 * 255.0)
    return hue, sat, val, bright


def _in_hue(hue: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    out = np.zeros(hue.shape, dtype=bool)
    for lo, hi in ranges:
        if lo <= hi:
            out |= (hue >= lo) & (hue <= hi)
        else:  # wraps through 0 degrees
            out |= (hue >= lo) | (hue <= hi)
    return out


def _disk(radius: int) -> np.ndarray:
    return morphology.disk(radius).astype(bool)


def detect_tissue(rgb: np.ndarray, params: TissueParams | None = None) -> np.ndarray:
    """Tissue mask of a low-resolution slide image (a thumbnail).

    Args:
        rgb: ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8`` image. RGBA is composited on
            white (slide background): ``rgb * a + 255 * (1 - a)``.
        params: Detection parameters; defaults to ``TissueParams()``.

    Returns:
        ``(H, W)`` boolean mask, ``True`` on tissue.

    Raises:
        ValueError: The image is not ``uint8``, not ``(H, W, 3|4)`` or empty.
    """
    p = TissueParams() if params is None else params
    img = _as_rgb(rgb)
    h, w = img.shape[:2]
    n = h * w
    hue, sat, val, bright = _hsv(img)

    # 1. Saturation threshold: Otsu, clipped to [floor, ceiling].
    thr = p.saturation_floor
    if p.use_otsu and float(sat.max()) > float(sat.min()):
        thr = float(np.clip(threshold_otsu(sat), p.saturation_floor, p.saturation_ceiling))

    dark = val < p.dark_value
    coloured = ((sat >= thr) & (bright <= p.max_brightness)) | dark
    stain = _in_hue(hue, p.stain_hue_ranges)
    red_ink = _in_hue(hue, (p.red_pen_hue_range,)) & (sat >= p.red_pen_min_saturation)
    ink = coloured & (dark | ~stain | red_ink)
    tissue = coloured & ~ink

    # 2. Blobs that are mostly ink are pen marks as a whole (their pale halo included).
    if coloured.any():
        labels, nlab = ndi.label(coloured)
        if nlab:
            area = np.bincount(labels.ravel(), minlength=nlab + 1)
            inked = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=nlab + 1)
            pen_blob = inked > p.pen_component_fraction * np.maximum(area, 1)
            pen_blob[0] = False
            tissue &= ~pen_blob[labels]

    # 3. Morphology: join fragments, fill holes, drop thin and small structures.
    min_size = max(1, int(round(p.min_object_fraction * n)))
    if p.closing_radius:
        tissue = ndi.binary_closing(tissue, _disk(p.closing_radius), border_value=0)
    tissue = morphology.remove_small_objects(tissue, min_size=min_size)
    max_hole = int(round(p.max_hole_fraction * n))
    if max_hole > 0:
        tissue = morphology.remove_small_holes(tissue, area_threshold=max_hole)
    if p.opening_radius:
        tissue = ndi.binary_opening(tissue, _disk(p.opening_radius))
    tissue = morphology.remove_small_objects(tissue, min_size=min_size)
    return np.asarray(tissue, dtype=bool)


def tissue_fraction(rgb: np.ndarray, params: TissueParams | None = None) -> float:
    """Fraction of an image's pixels that are tissue.

    Args:
        rgb: ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8`` image.
        params: Detection parameters; defaults to ``TissueParams()``.

    Returns:
        The fraction in ``[0, 1]``.

    Raises:
        ValueError: The image is not ``uint8``, not ``(H, W, 3|4)`` or empty.
    """
    return float(detect_tissue(rgb, params).mean())


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


def patch_tissue_fractions(
    mask: np.ndarray, scale: float, patch_size: int, grid_shape: tuple[int, int]
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
    if (
        len(grid_shape) != 2
        or any(isinstance(g, bool) or not isinstance(g, (int, np.integer)) for g in grid_shape)
        or any(g < 0 for g in grid_shape)
    ):
        raise ValueError(
            f"patch_tissue_fractions: grid_shape must be two non-negative ints, got {grid_shape!r}"
        )
    n_h, n_w = int(grid_shape[0]), int(grid_shape[1])
    out = np.zeros((n_h, n_w), dtype=np.float32)
    mh, mw = m.shape
    if n_h == 0 or n_w == 0 or mh == 0 or mw == 0:
        return out

    # Summed-area table: sat[a, b] = sum(mask[:a, :b]); exact in int64, then float64.
    sat = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    np.cumsum(np.cumsum(m != 0, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    satf = sat.astype(np.float64)

    side = patch_size * s  # patch side in mask pixels
    ys = np.clip(np.arange(n_h + 1, dtype=np.float64) * side, 0.0, float(mh))
    xs = np.clip(np.arange(n_w + 1, dtype=np.float64) * side, 0.0, float(mw))
    rows = _edge_interp(satf, ys, axis=0)  # (n_h + 1, mw + 1)
    corners = _edge_interp(rows, xs, axis=1)  # (n_h + 1, n_w + 1)
    box = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    out[...] = np.clip(box / (side * side), 0.0, 1.0)
    return out
