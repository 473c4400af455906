"""PNG plots: learning curves from metrics.jsonl, patch heat maps over slide thumbnails."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def file_stem(name: str) -> str:
    """``name`` as part of a file name: path separators and characters some file systems refuse
    (``/ \\ : * ? " < > |``, control characters) become ``_``."""
    safe = re.sub(r'[/\\:*?"<>|\x00-\x1f\x7f]', "_", name).strip(" .")
    return safe or "_"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(records: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Loss, accuracy and QWK per epoch, train and validation, one panel each."""
    out = Path(out)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = [r["epoch"] + 1 for r in records]
    for ax, metric in zip(axes, ("loss", "accuracy", "qwk"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{metric}") for r in records]
            if any(y is not None for y in ys):
                ax.plot(
                    epochs,
                    [np.nan if y is None else y for y in ys],
                    style,
                    label=split,
                    markersize=3,
                )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_heatmap(
    thumbnail: np.ndarray,
    heat: np.ndarray,
    out: str | Path,
    title: str = "",
    extent_fraction: tuple[float, float] = (1.0, 1.0),
) -> Path:
    """A patch heat map (n_h, n_w) over an RGB thumbnail.

    Args:
        thumbnail: (h, w, 3) uint8 of the whole slide.
        heat: per-patch values (nan where no patch: not drawn).
        out: PNG path.
        title: figure title.
        extent_fraction: the part of the thumbnail (height, width) the patch grid covers (the
            grid's padded last row/column may reach past the image).
    """
    out = Path(out)
    h, w = thumbnail.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5 * h / max(w, 1) + 0.6))
    for ax in axes:
        ax.imshow(thumbnail)
        ax.set_axis_off()
    gh, gw = extent_fraction
    masked = np.ma.masked_invalid(heat)
    vmax = float(np.nanmax(np.abs(heat))) if np.isfinite(heat).any() else 1.0
    im = axes[1].imshow(
        masked,
        cmap="coolwarm",
        alpha=0.6,
        vmin=-vmax,
        vmax=vmax,
        extent=(0, w * gw, h * gh, 0),
        interpolation="nearest",
    )
    axes[1].set_xlim(0, w)
    axes[1].set_ylim(h, 0)
    fig.colorbar(im, ax=axes[1], fraction=0.04, label="contribution to predicted class")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_comparison(
    curves: Mapping[str, Sequence[dict[str, Any]]],
    out: str | Path,
    chance: float | None = 0.5,
    qwk: bool = False,
    train_accuracy: bool = False,
) -> Path:
    """Validation accuracy and training loss per epoch of several runs, one line each (the
    validation QWK in another panel with ``qwk``, the training accuracy of the last inner
    iteration with ``train_accuracy``); ``chance`` draws the chance accuracy."""
    out = Path(out)
    panels = [("validation accuracy", "val_accuracy"), ("training loss", "train_loss")]
    if train_accuracy:
        panels.insert(1, ("training accuracy (last inner iteration)", "train_accuracy"))
    if qwk:
        panels.append(("validation QWK", "val_qwk"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for name, recs in curves.items():
        ep = [r["epoch"] + 1 for r in recs]
        for ax, (_, key) in zip(axes, panels, strict=True):
            ax.plot(ep, [r.get(key) for r in recs], "-o", label=name, markersize=3)
    if chance is not None:
        axes[0].axhline(chance, color="grey", ls="--", lw=1, label="chance")
    for ax, (t, _) in zip(axes, panels, strict=True):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
