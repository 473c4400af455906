"""Parameters of tissue detection: the frozen, validated :class:`TissueParams`.

Every store records the parameters its mask was made with (:meth:`TissueParams.to_dict`), so a
mask can always be reproduced; :mod:`wsi_patchgd.tissue.detect` explains what each one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

_METHODS = ("hsv-otsu",)

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
    range ``(lo, hi)`` with ``lo > hi`` wraps through 0 degrees (red). The docstring of
    :mod:`wsi_patchgd.tissue.detect` explains each step and how the defaults were chosen.

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
