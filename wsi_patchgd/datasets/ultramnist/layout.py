"""UltraMNIST canvas layouts: which digits a canvas holds, how large, and where.

Labels are drawn balanced by the caller; :func:`layout_canvas` picks a digit multiset with that
label (:func:`digit_multisets`), MNIST images from the split's pool, V-shaped log-uniform digit
sides (:func:`digit_side_range`, :func:`paper_digit_side_range` or ``digit_sizes``) and
non-overlapping positions by rejection sampling, reproducibly from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any

import numpy as np

from ...errors import ConfigError
from .mnist import MNIST_SIDE, MnistPools

#: Candidate positions tried per digit before the layout is redrawn.
PLACEMENT_TRIES = 256
#: Layouts tried per canvas before giving up.
LAYOUT_TRIES = 50
#: Digits per canvas.
MIN_DIGITS, MAX_DIGITS = 3, 5
#: Smallest digit side accepted in ``digit_sizes``.
MIN_DIGIT_SIDE = 8
#: The paper's 10-class canvases (``label="sum10"``): side, and digit scales 1x..9x of 28 px.
PAPER_SIDE, PAPER_SCALES = 512, (1, 9)
#: The splits, in the order of their seed streams and manifest folds (0 = train, 1 = val).
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Canvas:
    """The layout of one canvas (what ``meta.json`` records).

    Attributes:
        slide_id: ``um-<split>-<i>``.
        split: ``train`` or ``val``.
        label: the class (digit sum, digit sum mod 10, or largest digit).
        digit_sum: sum of the digits.
        digits: digit values, in placement order.
        mnist_set: the MNIST file the digits come from (``train`` or ``t10k``).
        mnist_index: index of every digit in that file.
        boxes: ``[x, y, side]`` of every digit's square box, in canvas pixels.
    """

    slide_id: str
    split: str
    label: int
    digit_sum: int
    digits: list[int]
    mnist_set: str
    mnist_index: list[int]
    boxes: list[list[int]]

    @property
    def scales(self) -> list[float]:
        """Scale of every digit relative to MNIST's 28 px."""
        return [b[2] / MNIST_SIDE for b in self.boxes]


def digit_side_range(side: int) -> tuple[int, int]:
    """Smallest and largest digit side on a canvas of ``side`` pixels (the default)."""
    return max(MIN_DIGIT_SIDE, round(side / 40)), side // 2


def paper_digit_side_range(side: int) -> tuple[int, int]:
    """The paper's digit sides for ``label="sum10"``: 1x..9x of 28 px on a 512 px canvas
    (28..252 px), in proportion on other sides (at least :data:`MIN_DIGIT_SIDE`)."""
    lo, hi = (round(MNIST_SIDE * f * side / PAPER_SIDE) for f in PAPER_SCALES)
    return max(MIN_DIGIT_SIDE, lo), max(MIN_DIGIT_SIDE, hi)


def check_digit_sizes(digit_sizes: Any, side: int) -> tuple[int, int]:
    """``digit_sizes`` as ``(min, max)`` after checking ``8 <= min <= max <= side``.

    Raises:
        ConfigError: not two integers, or out of range (one line naming the option).
    """
    try:
        lo, hi = (int(v) for v in digit_sizes)
        if (lo, hi) != tuple(digit_sizes):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            f"digit_sizes={digit_sizes!r} (--digit-sizes): give two integers MIN,MAX, the "
            "smallest and largest digit side in canvas pixels"
        ) from None
    if not MIN_DIGIT_SIDE <= lo <= hi <= side:
        raise ConfigError(
            f"digit_sizes={lo},{hi} (--digit-sizes): need {MIN_DIGIT_SIDE} <= MIN <= MAX <= "
            f"side ({side} px)"
        )
    return lo, hi


def digit_multisets(classes: int, label: str = "sum") -> list[list[tuple[int, ...]]]:
    """Digit multisets of 3-5 digits with sum <= 27 (<= 9 for ``sum10``), grouped by label."""
    out: list[list[tuple[int, ...]]] = [[] for _ in range(classes)]
    for k in range(MIN_DIGITS, MAX_DIGITS + 1):
        for combo in combinations_with_replacement(range(10), k):
            s = sum(combo)
            if label == "sum10":
                if s <= 9:
                    out[s].append(combo)
            elif s <= 27:
                if label == "max":
                    out[max(combo)].append(combo)
                else:
                    out[s % classes if classes == 10 else s].append(combo)
    return out


LABELS = ("sum", "max", "sum10")


def label_name(classes: int, label: str) -> str:
    """What the label of a canvas means, in words (recorded in ``meta.json``)."""
    if label == "max":
        return "largest digit"
    if label == "sum10":
        return "digit sum (sums 0..9 only)"
    return "digit sum" if classes == 28 else "digit sum mod 10"


def _sample_sides(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """Log-uniform sides in [lo, hi] weighted 1 + 4 |2u - 1| (V-shaped: extremes 5x likelier)."""
    out = np.empty(n, np.int64)
    for i in range(n):
        while True:
            u, v = rng.random(), rng.random()
            if v * 5.0 <= 1.0 + 4.0 * abs(2.0 * u - 1.0):
                break
        out[i] = int(round(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))))
    return np.clip(out, lo, hi)


def _place(rng: np.random.Generator, sides: np.ndarray, canvas: int) -> list[list[int]] | None:
    """Non-overlapping boxes for digits of the given sides (largest first), or None."""
    order = np.argsort(-sides, kind="stable")
    placed = np.zeros((0, 3), np.int64)
    boxes: list[list[int]] = [[] for _ in sides]
    for i in order:
        s = int(sides[i])
        cand = rng.integers(0, canvas - s + 1, size=(PLACEMENT_TRIES, 2))
        if len(placed):
            x, y = cand[:, :1], cand[:, 1:]
            px, py, ps = placed[:, 0], placed[:, 1], placed[:, 2]
            clash = (x < px + ps) & (px < x + s) & (y < py + ps) & (py < y + s)
            ok = np.flatnonzero(~clash.any(axis=1))
        else:
            ok = np.arange(PLACEMENT_TRIES)
        if not len(ok):
            return None
        x0, y0 = (int(v) for v in cand[ok[0]])
        boxes[i] = [x0, y0, s]
        placed = np.vstack([placed, [x0, y0, s]])
    return boxes


def layout_canvas(
    split: str,
    index: int,
    label: int,
    seed: int,
    side: int,
    multisets: list[list[tuple[int, ...]]],
    pools: MnistPools,
    by_digit: list[np.ndarray],
    sizes: tuple[int, int] | None = None,
) -> Canvas:
    """The layout of canvas ``index`` of ``split``: its digits, their images, sizes and boxes.

    Args:
        split: ``train`` or ``val``.
        index: the canvas's index in its split (with ``seed`` and ``split``, its random stream).
        label: the canvas's class.
        seed: the dataset seed.
        side: canvas side in pixels.
        multisets: :func:`digit_multisets` of the dataset's classes and label kind.
        pools: the digit pools.
        by_digit: ``pools.by_digit(split)``.
        sizes: ``(min, max)`` digit side (default: :func:`digit_side_range`).

    Returns:
        The canvas layout.

    Raises:
        ConfigError: the digits find no non-overlapping places in :data:`LAYOUT_TRIES` tries.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))
    options = multisets[label]
    digits = list(options[int(rng.integers(len(options)))])
    rng.shuffle(digits)
    mnist_index = [0] * len(digits)
    for d in sorted(set(digits)):
        where = [k for k, v in enumerate(digits) if v == d]
        pick = rng.choice(by_digit[d], size=len(where), replace=len(by_digit[d]) < len(where))
        for k, v in zip(where, pick, strict=True):
            mnist_index[k] = int(v)
    lo, hi = sizes if sizes is not None else digit_side_range(side)
    for _ in range(LAYOUT_TRIES):
        boxes = _place(rng, _sample_sides(rng, len(digits), lo, hi), side)
        if boxes is not None:
            return Canvas(
                slide_id=f"um-{split}-{index}",
                split=split,
                label=label,
                digit_sum=sum(digits),
                digits=[int(d) for d in digits],
                mnist_set=pools.pools[split][0],
                mnist_index=mnist_index,
                boxes=boxes,
            )
    raise ConfigError(
        f"um-{split}-{index}: could not place {len(digits)} non-overlapping digits of "
        f"{lo}..{hi} px on a {side} px canvas in {LAYOUT_TRIES} tries; use a larger side or "
        "smaller digit_sizes (--digit-sizes)"
    )
