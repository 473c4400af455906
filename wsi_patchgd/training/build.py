"""Building a run from its config: manifest rows, folds, then the training method's parts."""

from __future__ import annotations

from collections.abc import Sequence

from ..data import read_manifest
from ..data.manifest import ManifestRow, check_manifest_stores
from ..errors import ConfigError
from ..models.norm import set_momentum
from .config import RunConfig
from .methods import method_for
from .setup import Log, Setup, pick_device


def build(
    cfg: RunConfig,
    *,
    check_stores: bool = True,
    log: Log = print,
    manifest_rows: Sequence[ManifestRow] | None = None,
) -> Setup:
    """Manifest, patch source, model and method settings of a config.

    Args:
        cfg: the run config.
        check_stores: open every store of the manifest first (one clear error for a bad one).
        log: where the memory planner's lines go.
        manifest_rows: rows to use instead of reading ``data.manifest`` (e.g. the stores given
            to ``predict``, built in memory).

    Raises:
        ConfigError: manifest problems, no training slide, a setting the data cannot satisfy.
    """
    so = cfg.data.storage_options or None
    if manifest_rows is None:
        rows = read_manifest(
            cfg.data.manifest, cfg.model.num_classes, check_stores=check_stores, storage_options=so
        )
    else:
        rows = list(manifest_rows)
        if check_stores:
            check_manifest_stores(rows, "stores", so)
    train_ids = [i for i, r in enumerate(rows) if r.fold in cfg.data.train_folds]
    val_ids = [i for i, r in enumerate(rows) if r.fold in cfg.data.val_folds]
    if not train_ids:
        raise ConfigError(f"{cfg.data.manifest}: no slide in train_folds {cfg.data.train_folds}")
    setup = method_for(cfg).build(cfg, rows, train_ids, val_ids, pick_device(cfg.device), log)
    if cfg.model.norm_momentum is not None:
        set_momentum(setup.model, cfg.model.norm_momentum)
    return setup
