"""Run configuration: a YAML file (data, model, patchgd, optim, schedule, output) validated
against one schema, with ``key=value`` command-line overrides (``optim.lr=3e-4``).

Unknown keys and bad values raise :class:`~wsi_patchgd.errors.ConfigError` naming the key and
the fix (with a "did you mean" for typos).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..errors import ConfigError
from ..io import redact_storage_options
from .model_config import ModelConfig, validate_model_config


@dataclass
class DataConfig:
    manifest: str = ""  #: CSV of slide_id, store, label, fold (relative to the config file)
    level: int = 0  #: pyramid level PatchGD trains on
    patch_size: int | None = None  #: default: the stores' chunk size
    tissue_threshold: float = 0.1  #: a patch is tissue when its tissue fraction is >= this
    train_folds: list[int] = field(default_factory=lambda: [0])
    val_folds: list[int] = field(default_factory=lambda: [1])
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: local directory that keeps the shards of remote (s3://, gs://) stores, so that epoch 2
    #: onward reads at local speed; may be shared by processes; None: no cache
    cache_dir: str | None = None
    cache_size: str = "20GB"  #: the shard cache's size limit (least recently used go first)
    #: how remote stores' patches are fetched: auto (= fsspec) | fsspec | obstore (pip install
    #: obstore: less CPU per request; credentials from the environment, not ~/.aws profiles)
    remote_backend: str = "auto"


@dataclass
class PatchGDConfig:
    method: str = "patchgd"  #: patchgd | gd (the standard gradient descent baseline)
    k: int | None = None  #: patches per image per inner iteration
    sampling_fraction: float | None = 0.125  #: k = ceil(fraction x tissue patches) if k unset
    inner_iterations: int | None = None  #: zeta; default ceil(1 / sampling fraction)
    epsilon: int | None = None  #: gradient accumulation steps; default = inner_iterations
    sampler: str = "permutation"
    fill_batch_size: int = 64
    #: backbone normalisation in fill, inner iterations and evaluation alike:
    #: batch (the reference) | frozen (running statistics, refreshed each batch) | group
    norm: str = "batch"
    gd_image_size: int = 512  #: GD baseline: images resized to this side
    memory_budget: str | None = None  #: e.g. "4GB": picks k and the fill batch to fit


@dataclass
class OptimConfig:
    name: str = "adam"  #: adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    epochs: int = 10
    batch_size: int = 2
    #: linear warm-up, in epochs' worth of optimizer steps (the paper: 2); warmup_steps wins
    warmup_epochs: float = 2.0
    warmup_steps: int | None = None
    #: per optimizer step after warm-up: linear (the reference) | cosine | constant
    scheduler: str = "linear"
    #: the decay would reach 0 after decay_factor x epochs (the reference: 2, so a run ends
    #: at about half the peak rate instead of 0)
    decay_factor: float = 2.0


@dataclass
class AugmentConfig:
    """Training-time augmentation, one draw per image (off for validation and prediction)."""

    flips: bool = True  #: horizontal / vertical flips of the whole image (grid and patches)
    rot90: bool = True  #: quarter turns of the whole image
    hed_sigma: float = 0.0  #: stain jitter strength in HED space (0: off; 0.03-0.05 typical)


@dataclass
class OutputConfig:
    dir: str = "runs/run"
    heatmaps: int = 4  #: validation slides that get a heat map each epoch's end (0: none)
    checkpoint_every: int = 1


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    patchgd: PatchGDConfig = field(default_factory=PatchGDConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    precision: str = "fp32"  #: fp32 | bf16 (autocast)
    deterministic: bool = False  #: torch.use_deterministic_algorithms (4x slower convs on CPU)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_saved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the credentials in ``data.storage_options`` redacted: what a run
        writes into its directory and checkpoints (secrets never reach the disk; a run that
        reads such a config gets them from the environment, see :mod:`wsi_patchgd.io`)."""
        d = self.to_dict()
        d["data"]["storage_options"] = redact_storage_options(d["data"]["storage_options"])
        return d


_CHOICES = {
    "model.head": ("pooled", "paper"),
    "model.background": ("zero", "learned"),
    "data.remote_backend": ("auto", "fsspec", "obstore"),
    "patchgd.method": ("patchgd", "gd"),
    "patchgd.sampler": ("permutation", "all", "tissue_weighted"),
    "patchgd.norm": ("batch", "frozen", "group"),
    "optim.name": ("adam", "adamw", "sgd"),
    "schedule.scheduler": ("linear", "cosine", "constant"),
    "precision": ("fp32", "bf16"),
}
_POSITIVE = {
    "model.num_classes", "model.latent_dim", "model.head_channels", "model.head_convs",
    "patchgd.k", "patchgd.inner_iterations", "patchgd.epsilon", "patchgd.fill_batch_size",
    "patchgd.gd_image_size", "schedule.epochs", "schedule.batch_size", "output.checkpoint_every",
    "data.patch_size", "schedule.warmup_steps",
}  # fmt: skip
_RENAMED = {
    "patchgd.eval_norm": "patchgd.norm (frozen: running statistics in every phase)",
    "patchgd.fill_train_mode": "patchgd.norm (batch: train mode while filling, the reference)",
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "<root>"
        raise ConfigError(f"config key '{where}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in _RENAMED:
            raise ConfigError(f"config key '{full}' was replaced by {_RENAMED[full]}")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{full}' is unknown{hint} (valid: {', '.join(names)})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, f"{full}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(full, typ, value)
    return cls(**kwargs)


def _coerce(key: str, typ: Any, value: Any) -> Any:
    text = str(typ)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be empty")
    if text == "int | str":  # model.trainable: all | N
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}' must be an integer or a word, got {value!r}")
        return value
    if "list[int]" in text:
        vals = value if isinstance(value, list) else [value]
        try:
            return [int(v) for v in vals]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"config key '{key}' must be a list of integers, got {value!r}"
            ) from exc
    if "dict" in text:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if "bool" in text:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if "int" in text and "float" not in text:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if "float" in text:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _validate(cfg: RunConfig) -> None:
    for section in dataclasses.fields(cfg):  # nan / inf pass every comparison below
        node = getattr(cfg, section.name)
        items = (
            [(f"{section.name}.{f.name}", getattr(node, f.name)) for f in dataclasses.fields(node)]
            if dataclasses.is_dataclass(node)
            else [(section.name, node)]
        )
        for key, v in items:
            if isinstance(v, float) and (v != v or abs(v) == float("inf")):
                raise ConfigError(f"config key '{key}' = {v} must be a finite number")
    for key, choices in _CHOICES.items():
        v = _get(cfg, key)
        if v not in choices:
            raise ConfigError(f"config key '{key}' = {v!r} is invalid; choose one of {choices}")
    for key in _POSITIVE:
        v = _get(cfg, key)
        if v is not None and v < 1:
            raise ConfigError(f"config key '{key}' = {v} must be >= 1")
    sf = cfg.patchgd.sampling_fraction
    if sf is not None and not 0 < sf <= 1:
        raise ConfigError(f"config key 'patchgd.sampling_fraction' = {sf} must be in (0, 1]")
    if cfg.patchgd.k is None and sf is None:
        raise ConfigError("set patchgd.k or patchgd.sampling_fraction")
    if not 0 <= cfg.data.tissue_threshold <= 1:
        raise ConfigError("config key 'data.tissue_threshold' must be in [0, 1]")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' = {cfg.optim.lr} must be > 0")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(
            f"config key 'optim.weight_decay' = {cfg.optim.weight_decay} must be >= 0"
        )
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"config key 'optim.momentum' = {cfg.optim.momentum} must be in [0, 1)")
    validate_model_config(cfg.model)
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"config key 'model.dropout' = {cfg.model.dropout} must be in [0, 1)")
    if cfg.seed < 0:
        raise ConfigError(f"config key 'seed' = {cfg.seed} must be >= 0")
    for key, top in (("data.patch_size", 4096), ("patchgd.gd_image_size", 16384)):
        v = _get(cfg, key)
        if v is not None and v > top:
            raise ConfigError(f"config key '{key}' = {v} must be <= {top}")
    if cfg.schedule.warmup_epochs < 0:
        raise ConfigError("config key 'schedule.warmup_epochs' must be >= 0")
    if cfg.schedule.decay_factor < 1:
        raise ConfigError(
            f"config key 'schedule.decay_factor' = {cfg.schedule.decay_factor} must be >= 1"
            " (the decay would reach 0 before the run ends)"
        )
    if cfg.augment.hed_sigma < 0 or cfg.augment.hed_sigma > 0.5:
        raise ConfigError(
            f"config key 'augment.hed_sigma' = {cfg.augment.hed_sigma} must be in [0, 0.5]"
        )
    if cfg.data.level < 0:
        raise ConfigError("config key 'data.level' must be >= 0")
    parse_bytes(cfg.data.cache_size, "config key 'data.cache_size'")
    if not cfg.data.manifest:
        raise ConfigError(
            "config key 'data.manifest' is required (a CSV: slide_id,store,label,fold)"
        )
    if set(cfg.data.train_folds) & set(cfg.data.val_folds):
        raise ConfigError(
            "data.train_folds and data.val_folds overlap; validation must be held out"
        )
    if cfg.patchgd.memory_budget is not None:
        parse_bytes(cfg.patchgd.memory_budget, "patchgd.memory_budget")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"config key 'device' = {cfg.device!r}: use auto, cpu, cuda or cuda:N")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def parse_bytes(text: str, key: str = "memory budget") -> int:
    """'4GB', '512MiB', '2e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{key} = {text!r}: use a size like 4GB or 512MiB")
    num = float(m.group(1))
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20,
            "GIB": 2**30, "TIB": 2**40}[unit]  # fmt: skip
    return int(num * mult)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML config, apply overrides, validate.

    ``data.manifest`` and ``output.dir``, when relative, are taken relative to the config file.

    Raises:
        ConfigError: unreadable file, unknown key, bad value.
    """
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    root = Path(".")
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{p}: is a folder, not a config file; give the YAML file")
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 YAML"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"{p}: cannot read the config ({exc.strerror}); check its permissions"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        raw = _merge(raw, loaded)
        root = p.parent
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: '{k}' is not a section")
        node[keys[-1]] = value
    cfg: RunConfig = _build(RunConfig, raw, "")
    # relative to the config file, then absolute: the saved config.yaml works from anywhere
    if cfg.data.manifest and "://" not in cfg.data.manifest:
        cfg.data.manifest = str((root / cfg.data.manifest).resolve())
    if "://" not in cfg.output.dir:
        cfg.output.dir = str((root / cfg.output.dir).resolve())
    _validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from a mapping (a saved ``config.yaml`` or a checkpoint's).

    Raises:
        ConfigError: unknown key, bad value.
    """
    cfg: RunConfig = _build(RunConfig, data, "")
    _validate(cfg)
    return cfg


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, credentials redacted (:meth:`RunConfig.to_saved_dict`)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_saved_dict(), sort_keys=False))
