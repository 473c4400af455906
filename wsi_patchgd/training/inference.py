"""Evaluate a run's checkpoint, or predict on any stores with a checkpoint."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.manifest import ManifestRow, check_manifest_stores, read_manifest
from ..errors import ConfigError
from .checkpoint import load_checkpoint
from .config import RunConfig, config_from_dict

if TYPE_CHECKING:  # the trainer (torchvision, matplotlib) is imported after the quick checks
    from .setup import Setup


def _log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def config_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> RunConfig:
    """The run config saved in a training checkpoint.

    Raises:
        ConfigError: no config in it (a plain state dict) or one this version cannot read.
    """
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{path}: holds no run config (a plain state dict?); give a checkpoint written by "
            "`wsi-patchgd train` (a run's checkpoints/best.pt or last.pt)"
        )
    try:
        cfg = config_from_dict(saved)
    except ConfigError as exc:
        raise ConfigError(f"{path}: its run config is not valid here ({exc})") from exc
    return cfg


def _load_model(setup: Setup, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
    try:
        setup.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        from .resume import load_error

        m = setup.cfg.model
        why = load_error(exc)
        raise ConfigError(
            f"{path}: its weights do not fit the model of its config (model.backbone="
            f"{m.backbone}, model.num_classes={m.num_classes}: {why}); use the checkpoint "
            "that run wrote, unchanged"
        ) from exc
    setup.model.eval()


def evaluate_checkpoint(
    checkpoint: str | Path, folds: list[int] | None = None, manifest: str | None = None
) -> dict[str, Any]:
    """Metrics of a checkpoint on validation folds (or given folds / another manifest)."""
    state = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state, checkpoint)
    if manifest:
        cfg.data.manifest = manifest
    so = cfg.data.storage_options or None
    rows = read_manifest(  # its rows now, its stores in build()
        cfg.data.manifest, cfg.model.num_classes, storage_options=so, check_stores=False
    )
    if folds is not None:
        have = sorted({r.fold for r in rows})
        missing = [f for f in folds if f not in have]
        if missing:
            raise ConfigError(
                f"{cfg.data.manifest}: no slide in fold(s) {missing}; its folds are {have}: pick "
                "--folds from them"
            )
        cfg.data.val_folds = folds
        cfg.data.train_folds = [f for f in cfg.data.train_folds if f not in folds] or [-1]
    elif not any(r.fold in cfg.data.val_folds for r in rows):
        raise ConfigError(
            f"{cfg.data.manifest}: no slide in the run's validation fold(s) "
            f"{cfg.data.val_folds}; give --folds"
        )
    if not any(r.fold in cfg.data.train_folds for r in rows):  # e.g. another manifest
        cfg.data.train_folds = [-1]
    from .build import build
    from .evaluate import evaluate_ids

    setup = build(cfg, log=lambda *a: None) if cfg.data.train_folds != [-1] else _build_any(cfg)
    _load_model(setup, state, checkpoint)
    res = evaluate_ids(setup, setup.val_ids)
    res["checkpoint"] = str(checkpoint)
    res["epoch"] = state.get("epoch")
    return res


def _build_any(cfg: RunConfig) -> Setup:
    from .build import build

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
    cfg = config_from_checkpoint(state, checkpoint)
    if storage_options:  # over the saved ones (endpoint ...; their credentials were redacted)
        cfg.data.storage_options = {**cfg.data.storage_options, **storage_options}
    if not stores:
        raise ConfigError("predict needs at least one store")
    # the prediction set lives in memory: nothing is written next to out_csv, and store paths
    # stay what the caller gave (relative ones relative to the working directory)
    rows, seen = [], set()
    for url in stores:
        sid = Path(url.rstrip("/")).stem
        if sid in seen:
            raise ConfigError(f"{url}: store name {sid!r} given twice; give each store once")
        seen.add(sid)
        rows.append(ManifestRow(sid, url, 0, 0))
    cfg.data.train_folds, cfg.data.val_folds = [0], []
    check_manifest_stores(rows, "predict", cfg.data.storage_options or None)
    from ..plots import file_stem
    from .build import build
    from .evaluate import evaluate_ids, write_heatmap
    from .report import plot_or_warn

    setup = build(cfg, log=lambda *a: None, manifest_rows=rows, check_stores=False)
    _load_model(setup, state, checkpoint)
    res = evaluate_ids(setup, list(range(len(rows))))
    preds = res["predictions"]
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = cfg.model.num_classes
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:  # then renamed: never half a CSV
        w = csv.writer(fh)
        w.writerow(["slide_id", "store", "pred"] + [f"p{c}" for c in range(n)])
        for row, p in zip(rows, preds, strict=True):
            w.writerow([row.slide_id, row.store, p["pred"], *p["probs"]])
    os.replace(tmp, out)
    if heatmaps and setup.method.has_heatmaps:
        hd = Path(heatmaps)
        hd.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            png = hd / f"heatmap-{file_stem(row.slide_id)}.png"
            plot_or_warn(_log, png, lambda i=i, png=png: write_heatmap(setup, i, png))
    return [
        {"slide_id": r.slide_id, "store": r.store, **p} for r, p in zip(rows, preds, strict=True)
    ]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o))
