"""Evaluating a model on a run's slides: metrics and predictions, and per-patch heat maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.fill import fill_latent
from ..plots import plot_heatmap
from .distributed import Dist
from .metrics import accuracy, confusion, qwk
from .setup import Setup


def evaluate_ids(
    setup: Setup,
    ids: Sequence[int],
    model: nn.Module | None = None,
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, QWK, confusion matrix and per-slide predictions on the given images.

    Under torchrun (``dist``) every process predicts its share of ``ids`` and the logits are
    gathered, so every process returns the same result.

    Returns:
        ``{}`` when ``ids`` is empty, else ``loss``, ``accuracy``, ``qwk``, ``confusion`` and
        ``predictions`` (slide_id, label, pred, probs per image).
    """
    model = model or setup.model
    cfg = setup.cfg
    if not ids:
        return {}
    d = dist or Dist()
    bs = cfg.schedule.batch_size
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    mine = d.share(ids)
    parts = [
        setup.method.predict(setup, model, mine[i : i + bs], autocast).float().cpu()
        for i in range(0, len(mine), bs)
    ]
    local = torch.cat(parts) if parts else torch.zeros(0, cfg.model.num_classes)
    logits = torch.zeros(len(ids), cfg.model.num_classes)
    for rank, part in enumerate(d.gather(local)):  # rank r predicted ids[r::world]
        logits[rank :: d.world] = part
    y = torch.tensor([setup.rows[i].label for i in ids])
    pred = logits.argmax(1)
    n_cls = cfg.model.num_classes
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": accuracy(y.numpy(), pred.numpy()),
        "qwk": qwk(y.numpy(), pred.numpy(), n_cls),
        "confusion": confusion(y.numpy(), pred.numpy(), n_cls),
        "predictions": [
            {
                "slide_id": setup.rows[i].slide_id,
                "label": setup.rows[i].label,
                "pred": int(p),
                "probs": [round(float(v), 5) for v in pr],
            }
            for i, p, pr in zip(ids, pred, logits.softmax(1), strict=True)
        ],
    }


def latent_contributions(
    setup: Setup, image: int, model: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch contribution to every class logit: sum over D of Z * dlogit_k/dZ (grad x input).

    One fill of Z, then one backward pass through the head per class (the head only: cheap).

    Returns:
        ``(contributions, probabilities)``: (K, n_h, n_w) float64, background and padding
        cells nan; and the slide's (K,) class probabilities from the same forward pass.
    """
    net = model or setup.model
    net.eval()
    latent = fill_latent(net, setup.source, [image], setup.fill_batch_size)
    z = latent.z.detach().requires_grad_(True)
    logits = net.head(z, latent.valid)  # type: ignore[operator]
    grid = latent.grids[0]
    tissue = np.asarray(grid.tissue)
    out = []
    for k in range(logits.shape[1]):
        (g,) = torch.autograd.grad(logits[0, k], z, retain_graph=k + 1 < logits.shape[1])
        heat = (g * z).sum(1)[0].detach().float().cpu().numpy().astype(np.float64)
        heat = heat[: grid.n_h, : grid.n_w]
        heat[~tissue] = np.nan
        out.append(heat)
    probs = logits.detach().float().softmax(1)[0].cpu().numpy().astype(np.float64)
    return np.stack(out), probs


def latent_heatmap(setup: Setup, image: int, model: nn.Module | None = None) -> np.ndarray:
    """Per-patch contribution to the predicted class (see :func:`latent_contributions`).

    Returns:
        (n_h, n_w) float64; background and padding cells are nan.
    """
    contrib, probs = latent_contributions(setup, image, model)
    return contrib[int(np.argmax(probs))]


def write_heatmap(
    setup: Setup,
    image: int,
    out: Path,
    model: nn.Module | None = None,
    heat: np.ndarray | None = None,
) -> Path:
    """A PNG of :func:`latent_heatmap` (or of ``heat``) over a thumbnail (at most 1024 px)."""
    if heat is None:
        heat = latent_heatmap(setup, image, model)
    store = setup.source.store(image)
    lvl = next(
        (i for i in range(store.n_levels) if max(store.level_shape(i)) <= 1024), store.n_levels - 1
    )
    h, w = store.level_shape(lvl)
    thumb = store.read_region(lvl, 0, 0, w, h)
    level = setup.source.levels[image]
    lh, lw = store.level_shape(level)
    p = setup.source.patch_size
    ext = (heat.shape[0] * p / lh, heat.shape[1] * p / lw)
    row = setup.rows[image]
    return plot_heatmap(thumb, heat, out, f"{row.slide_id} (label {row.label})", ext)
