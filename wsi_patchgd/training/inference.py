"""Evaluate a run's checkpoint, or predict on any stores with a checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from ..data.manifest import ManifestRow
from ..errors import ConfigError
from .checkpoint import load_checkpoint
from .config import RunConfig, _build, _validate
from .trainer import Setup, build, evaluate_ids, write_heatmap


def config_from_checkpoint(state: dict[str, Any]) -> RunConfig:
    cfg: RunConfig = _build(RunConfig, state["config"], "")
    _validate(cfg)
    return cfg


def _load_model(setup: Setup, state: dict[str, Any]) -> None:
    setup.model.load_state_dict(state["model"])
    setup.model.eval()


def evaluate_checkpoint(
    checkpoint: str | Path, folds: list[int] | None = None, manifest: str | None = None
) -> dict[str, Any]:
    """Metrics of a checkpoint on validation folds (or given folds / another manifest)."""
    state = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state)
    if manifest:
        cfg.data.manifest = manifest
    if folds is not None:
        cfg.data.val_folds = folds
        cfg.data.train_folds = [f for f in cfg.data.train_folds if f not in folds] or [-1]
    setup = build(cfg, log=lambda *a: None) if cfg.data.train_folds != [-1] else _build_any(cfg)
    _load_model(setup, state)
    res = evaluate_ids(setup, setup.val_ids)
    res["checkpoint"] = str(checkpoint)
    res["epoch"] = state.get("epoch")
    return res


def _build_any(cfg: RunConfig) -> Setup:
    folds = cfg.data.val_folds
    cfg.data.train_folds = folds  # build() needs train images; evaluation uses val ids only
    cfg.data.val_folds = []
    setup = build(cfg, log=lambda *a: None)
    setup.val_ids = setup.train_ids
    return setup


def predict_stores(
    checkpoint: str | Path,
    stores: list[str],
    out_csv: str | Path,
    heatmaps: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Predicted class and probabilities for each store; CSV (and heat map PNGs)."""
    state = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state)
    if storage_options:
        cfg.data.storage_options = storage_options
    rows = [ManifestRow(Path(s.rstrip("/")).stem, s, 0, 0) for s in stores]
    if not rows:
        raise ConfigError("predict needs at least one store")
    tmp = Path(out_csv).with_suffix(".manifest.csv")
    from ..data.manifest import write_manifest

    write_manifest(str(tmp), rows)
    try:
        cfg.data.manifest = str(tmp)
        cfg.data.train_folds, cfg.data.val_folds = [0], []
        setup = build(cfg, log=lambda *a: None)
    finally:
        tmp.unlink(missing_ok=True)
    _load_model(setup, state)
    res = evaluate_ids(setup, list(range(len(rows))))
    preds = res["predictions"]
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = cfg.model.num_classes
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "store", "pred"] + [f"p{c}" for c in range(n)])
        for row, p in zip(rows, preds, strict=True):
            w.writerow([row.slide_id, row.store, p["pred"], *p["probs"]])
    if heatmaps and cfg.patchgd.method == "patchgd":
        hd = Path(heatmaps)
        hd.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            write_heatmap(setup, i, hd / f"heatmap-{row.slide_id}.png")
    return [
        {"slide_id": r.slide_id, "store": r.store, **p} for r, p in zip(rows, preds, strict=True)
    ]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o))
