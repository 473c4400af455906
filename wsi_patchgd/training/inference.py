"""Evaluate a run's checkpoint, or predict on any stores with a checkpoint."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.manifest import ManifestRow, check_manifest_stores, read_manifest
from ..errors import ConfigError, ManifestError
from ..io import filesystem
from .bootstrap import DEFAULT_RESAMPLES, classification_report, group_reports
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
    checkpoint: str | Path,
    folds: list[int] | None = None,
    manifest: str | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    by: str | None = "provider",
) -> dict[str, Any]:
    """Metrics of a checkpoint on validation folds (or given folds / another manifest).

    Args:
        checkpoint: a training checkpoint.
        folds: the folds to evaluate (default: the run's validation folds).
        manifest: another manifest to evaluate on (default: the run's).
        resamples: bootstrap resamples of the 95 % intervals (0: no intervals).
        seed: seed of the resamples.
        by: a manifest column (default ``provider``; PANDA's ``data_provider`` is taken for
            it) whose values get a row each in ``groups``; None or a column the manifest lacks:
            no breakdown.

    Returns:
        :func:`.evaluate.evaluate_ids`'s result, plus ``checkpoint``, ``epoch``, ``n``,
        ``accuracy_ci`` / ``qwk_ci`` ([low, high], with ``resamples``, ``seed``), and
        ``groups``: ``{"column": ..., "rows": [{"group", "n", "accuracy", "accuracy_ci",
        "qwk", "qwk_ci"}, ...]}`` when the manifest has the column.
    """
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
    preds = res["predictions"]
    y = [p["label"] for p in preds]
    yhat = [p["pred"] for p in preds]
    n_cls = cfg.model.num_classes
    res["n"] = len(preds)
    if resamples > 0:
        rep = classification_report(y, yhat, n_cls, resamples, seed)
        res.update(accuracy_ci=rep["accuracy_ci"], qwk_ci=rep["qwk_ci"])
        res.update(resamples=resamples, seed=seed)
    column_values = manifest_column(cfg.data.manifest, by, so) if by else None
    if column_values is not None:
        column, values = column_values
        groups = [values.get(p["slide_id"], "") for p in preds]
        reports = group_reports(y, yhat, groups, n_cls, max(resamples, 1), seed)
        if resamples <= 0:
            for r in reports:
                r.pop("accuracy_ci"), r.pop("qwk_ci")
        res["groups"] = {"column": column, "rows": reports}
    return res


def manifest_column(
    url: str, column: str, storage_options: dict[str, Any] | None = None
) -> tuple[str, dict[str, str]] | None:
    """slide_id -> value of one column of a manifest; None when it has no such column.

    ``provider`` also finds PANDA's ``data_provider``.
    """
    fs, path = filesystem(url, storage_options)
    try:
        text = fs.cat_file(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:  # read_manifest read it a moment ago
        raise ManifestError(f"{url}: cannot read the manifest again ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    cols = reader.fieldnames or []
    names = [column] + (["data_provider"] if column == "provider" else [])
    found = next((c for c in names if c in cols), None)
    if found is None:
        return None
    return found, {(r.get("slide_id") or "").strip(): (r.get(found) or "").strip() for r in reader}


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
    *,
    ordinal: bool | None = None,
    store_layer: bool = True,
) -> list[dict[str, Any]]:
    """Predicted class and probabilities of each store; a CSV, and heat-map outputs.

    The CSV: ``slide_id, store, pred, prob_0 .. prob_<K-1>`` and, for ordinal labels,
    ``expected_grade`` = sum_k k * prob_k (in [0, K-1]; for ISUP grades 0..5 the mean grade).

    Args:
        checkpoint: a training checkpoint.
        stores: store URLs (slide id: the store's name without ``.zarr``).
        out_csv: the CSV to write (written whole, then renamed into place).
        heatmaps: a folder for the per-slide heat-map PNGs and QuPath GeoJSON, and then also
            the ``patchgd`` layer written into each store (see :mod:`.heatmap_outputs`).
        storage_options: fsspec options over the checkpoint's saved ones.
        ordinal: whether the classes are ordered grades (adds ``expected_grade``); None: what
            the checkpoint's config says (``model.ordinal``, where the config has that key),
            else no.
        store_layer: with ``heatmaps``, write the layer into each store (a store that cannot
            be written gets a warning, never an error).

    Returns:
        Per store: ``slide_id``, ``store``, ``pred``, ``probs`` (and ``expected_grade``).
    """
    state = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state, checkpoint)
    if storage_options:  # over the saved ones (endpoint ...; their credentials were redacted)
        cfg.data.storage_options = {**cfg.data.storage_options, **storage_options}
    if not stores:
        raise ConfigError("predict needs at least one store")
    if ordinal is None:
        ordinal = bool(getattr(cfg.model, "ordinal", False))
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
    from .build import build
    from .evaluate import evaluate_ids
    from .heatmap_outputs import write_slide_outputs

    setup = build(cfg, log=lambda *a: None, manifest_rows=rows, check_stores=False)
    _load_model(setup, state, checkpoint)
    res = evaluate_ids(setup, list(range(len(rows))))
    preds = [{k: v for k, v in p.items() if k != "label"} for p in res["predictions"]]
    n = cfg.model.num_classes
    for p in preds:
        if ordinal:
            p["expected_grade"] = expected_grade(p["probs"])
    header = ["slide_id", "store", "pred"] + [f"prob_{c}" for c in range(n)]
    header += ["expected_grade"] if ordinal else []
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:  # then renamed: never half a CSV
        w = csv.writer(fh)
        w.writerow(header)
        for row, p in zip(rows, preds, strict=True):
            extra = [p["expected_grade"]] if ordinal else []
            w.writerow([row.slide_id, row.store, p["pred"], *p["probs"], *extra])
    os.replace(tmp, out)
    if heatmaps and not setup.method.has_heatmaps:
        _log(f"warning: {setup.method.name} has no patch latent; no heat maps written")
    elif heatmaps:
        hd = Path(heatmaps)
        hd.mkdir(parents=True, exist_ok=True)
        for i in range(len(rows)):
            write_slide_outputs(setup, i, hd, _log, store_layer=store_layer)
    return [
        {"slide_id": r.slide_id, "store": r.store, **p} for r, p in zip(rows, preds, strict=True)
    ]


def expected_grade(probs: list[float]) -> float:
    """sum_k k * p_k of class probabilities (the mean of ordered grades 0..K-1)."""
    total = sum(probs) or 1.0
    return round(sum(k * p for k, p in enumerate(probs)) / total, 5)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o))
