"""Bootstrap confidence intervals of accuracy and QWK, and the same per group (data provider).

The percentile bootstrap over slides: ``resamples`` draws of n slides with replacement (one
seeded ``numpy`` generator, so the interval is the same on every run), the metric on each, and
the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those values. Accuracy and QWK use
the same draws. QWK is :func:`.metrics.qwk` (scikit-learn's quadratic weighted kappa over all
classes of the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .metrics import accuracy, qwk

Metric = Callable[[np.ndarray, np.ndarray], float]

#: resamples and interval level of ``wsi-patchgd evaluate`` unless told otherwise
DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def bootstrap_intervals(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    metrics: dict[str, Metric],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric, over the same resamples.

    Args:
        y_true, y_pred: labels and predictions of the same slides.
        metrics: name -> ``metric(y_true, y_pred)``.
        resamples: bootstrap draws (>= 1).
        seed: seed of the draws.
        level: coverage of the interval, in (0, 1).

    Returns:
        name -> (low, high); (nan, nan) without slides.

    Raises:
        ValueError: ``resamples`` < 1, ``level`` outside (0, 1), or lengths that differ.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"{yt.size} labels but {yp.size} predictions")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    if yt.size == 0:
        return {name: (float("nan"), float("nan")) for name in metrics}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, yt.size, size=(resamples, yt.size))
    values = {name: np.empty(resamples) for name in metrics}
    for i, idx in enumerate(draws):
        for name, fn in metrics.items():
            values[name][i] = fn(yt[idx], yp[idx])
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    out = {}
    for name, v in values.items():
        lo, hi = np.nanpercentile(v, q) if np.isfinite(v).any() else (np.nan, np.nan)
        out[name] = (float(lo), float(hi))
    return out


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    num_classes: int,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Accuracy and QWK of the slides with their bootstrap intervals.

    Returns:
        ``n``, ``accuracy``, ``accuracy_ci`` ([low, high]), ``qwk``, ``qwk_ci``.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    fns: dict[str, Metric] = {
        "accuracy": accuracy,
        "qwk": lambda a, b: qwk(a, b, num_classes),
    }
    ci = bootstrap_intervals(yt, yp, fns, resamples, seed, level)
    out: dict[str, Any] = {"n": int(yt.size)}
    for name, fn in fns.items():
        out[name] = fn(yt, yp)
        out[f"{name}_ci"] = list(ci[name])
    return out


def group_reports(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    num_classes: int,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> list[dict[str, Any]]:
    """:func:`classification_report` of each group's slides (e.g. per data provider).

    Returns:
        One dict per group value, sorted by it: ``group`` and the report's keys. Every group
        is resampled with the same seed, so its interval does not depend on the others.
    """
    yt, yp, g = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups, dtype=object)
    if not yt.size == yp.size == g.size:
        raise ValueError(f"{yt.size} labels, {yp.size} predictions and {g.size} groups")
    out = []
    for value in sorted({str(v) for v in g}):
        sel = g == value
        rep = classification_report(yt[sel], yp[sel], num_classes, resamples, seed, level)
        out.append({"group": value, **rep})
    return out
