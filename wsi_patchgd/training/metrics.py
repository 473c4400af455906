"""Classification metrics: accuracy and quadratic weighted kappa (QWK, the PANDA metric)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of correct predictions (nan for no samples)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def qwk(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Quadratic weighted kappa over classes 0..num_classes-1.

    1 for perfect agreement, 0 for chance; defined as 0 when only one class occurs in both
    (scikit-learn would return nan there).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    if np.unique(np.concatenate([y_true, y_pred])).size < 2:
        return 1.0 if (y_true == y_pred).all() else 0.0
    return float(
        cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=np.arange(num_classes))
    )


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).tolist()  # type: ignore[no-any-return]
