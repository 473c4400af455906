"""What a run is made of (:class:`Setup`), and its device, optimizer, schedule, augmentation.

:func:`.build.build` makes a Setup from a config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..augment import AugmentConfig as Augmenter
from ..data import StorePatchSource
from ..data.manifest import ManifestRow
from ..errors import ConfigError
from .config import RunConfig
from .memory import MemoryPlan
from .schedule import build_scheduler

if TYPE_CHECKING:
    from .methods import TrainingMethod

Log = Callable[..., None]


@dataclass
class Setup:
    """Everything a run (or an evaluation) builds from its config.

    Attributes:
        cfg: the run config (for GD under a memory budget, with the planned image size).
        rows: the manifest rows; ``train_ids`` / ``val_ids`` index them.
        source: patches (PatchGD) or whole images (GD) of every row's store.
        model: on ``device``.
        method: the training method (:class:`~.methods.PatchGD` or :class:`~.methods.GD`).
        k, zeta, epsilon: PatchGD's patches per inner iteration, inner iterations per batch and
            iterations per optimizer step (0, 1, 1 for GD).
        fill_batch_size: patches per no-grad forward while filling Z (and GD's predict batch).
        memory: the memory plan under ``patchgd.memory_budget`` (PatchGD), else None.
    """

    cfg: RunConfig
    rows: list[ManifestRow]
    train_ids: list[int]
    val_ids: list[int]
    source: StorePatchSource
    model: nn.Module
    device: torch.device
    method: TrainingMethod
    k: int = 0
    zeta: int = 1
    epsilon: int = 1
    fill_batch_size: int = 64
    memory: MemoryPlan | None = None


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a named CUDA device must exist.

    Raises:
        ConfigError: ``cuda...`` asked for on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the model's trainable parameters."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, o.lr, weight_decay=o.weight_decay)


def make_scheduler(setup: Setup, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-optimizer-step learning-rate schedule of a run (:mod:`.schedule`)."""
    s = setup.cfg.schedule
    return build_scheduler(
        opt,
        setup.method.steps_per_epoch(setup),
        s.epochs,
        s.scheduler,
        s.warmup_epochs,
        s.warmup_steps,
        s.decay_factor,
    )


def augmenter(cfg: RunConfig) -> Augmenter:
    """The run's augmentation settings (the same for PatchGD and the GD baseline)."""
    a = cfg.augment
    return Augmenter(flips=a.flips, rot90=a.rot90, hed_sigma=a.hed_sigma)


def describe(setup: Setup) -> str:
    """One line on what a run trains: method, slides, and its method's settings."""
    return (
        f"{setup.method.name}: {len(setup.train_ids)} train / {len(setup.val_ids)} val slides, "
        + setup.method.describe(setup)
    )
