"""Training methods: PatchGD and the standard gradient-descent (GD) baseline, one object each.

Everything in a run that depends on the method lives here — how its model and patch source are
built (and fitted to a memory budget), one training batch, prediction, optimizer steps per epoch,
what a checkpoint records and what the summary reports — so the loop in :mod:`.trainer` has no
branch on the method's name. :func:`method_for` picks the object named by ``patchgd.method``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data import StorePatchSource
from ..data.manifest import ManifestRow
from ..engine.gd import gd_predict, gd_train_batch
from ..engine.model import build_gd_model, build_patchgd_model
from ..engine.patchgd import predict, train_batch
from ..engine.step import LossFn
from ..errors import ConfigError
from ..sampling import build_sampler
from ..store.remote import StreamOptions
from ..store.slide_store import SlideStore
from .config import RunConfig
from .memory import gd_step_bytes, plan_gd_image_size, plan_memory
from .schedule import steps_per_epoch
from .setup import Log, Setup


class TrainingMethod(abc.ABC):
    """What the training loop asks of a method."""

    #: ``patchgd.method`` value
    name: ClassVar[str]
    #: whether per-patch heat maps exist (a latent map Z to explain)
    has_heatmaps: ClassVar[bool] = False

    @abc.abstractmethod
    def build(
        self,
        cfg: RunConfig,
        rows: list[ManifestRow],
        train_ids: list[int],
        val_ids: list[int],
        device: torch.device,
        log: Log,
    ) -> Setup:
        """Patch source, model (on ``device``) and settings for these rows."""

    @abc.abstractmethod
    def train_batch(
        self,
        setup: Setup,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        source: Any,
        batch: list[int],
        labels: torch.Tensor,
        rng: np.random.Generator | Sequence[np.random.Generator],
        loss_fn: LossFn,
        autocast: torch.dtype | None,
    ) -> Mapping[str, Any]:
        """One batch of ``model`` (``setup.model``, or it in a DDP wrapper): ``loss``, ``logits``
        (one tensor per inner iteration), ``lrs``. ``rng``: one generator per image."""

    @abc.abstractmethod
    def predict(
        self, setup: Setup, model: nn.Module, ids: list[int], autocast: torch.dtype | None
    ) -> torch.Tensor:
        """Logits (n, classes) of the given images, without gradients."""

    @abc.abstractmethod
    def steps_per_epoch(self, setup: Setup) -> int:
        """Optimizer steps one epoch takes (what the learning-rate schedule counts)."""

    @abc.abstractmethod
    def describe(self, setup: Setup) -> str:
        """The method's settings in effect, for the run's first log line."""

    def in_effect(self, setup: Setup) -> dict[str, int]:
        """Settings derived at build time that a resumed run must reproduce."""
        return {}

    def summary(self, setup: Setup) -> dict[str, Any]:
        """The method's settings for ``summary.json``."""
        return {"k": setup.k, "zeta": setup.zeta, "epsilon": setup.epsilon, "gd_image_size": None}


class PatchGD(TrainingMethod):
    """Patch Gradient Descent (:mod:`wsi_patchgd.engine.patchgd`) over the slides' patch grids."""

    name = "patchgd"
    has_heatmaps = True

    def build(
        self,
        cfg: RunConfig,
        rows: list[ManifestRow],
        train_ids: list[int],
        val_ids: list[int],
        device: torch.device,
        log: Log,
    ) -> Setup:
        m, p = cfg.model, cfg.patchgd
        self.sampler = build_sampler(p.sampler)
        so = cfg.data.storage_options or None
        urls = [r.store for r in rows]
        source = StorePatchSource(
            urls,
            cfg.data.level,
            cfg.data.patch_size,
            cfg.data.tissue_threshold,
            so,
            cache_dir=cfg.data.cache_dir,
            cache_size=cfg.data.cache_size,
            stream=StreamOptions(backend=cfg.data.remote_backend),
        )
        grids = [source.grid(i) for i in range(len(urls))]
        grid = None
        if m.head == "paper":
            shapes = {g.shape for g in grids}
            if len(shapes) != 1:
                raise ConfigError(
                    f"model.head=paper needs one grid size for all slides, got {shapes};"
                    " use model.head=pooled"
                )
            grid = shapes.pop()
        model = build_patchgd_model(
            m.backbone,
            m.num_classes,
            m.head,
            m.latent_dim,
            grid,
            m.weights,
            m.checkpointing,
            m.background,
            p.norm,
            m.head_channels,
            m.head_convs,
            m.dropout,
            patch_size=source.patch_size,
            trainable=m.trainable,
        )
        n_max = max(grids[i].n_tissue for i in train_ids)
        if p.k is not None:
            k = p.k
        else:
            assert p.sampling_fraction is not None
            k = max(1, math.ceil(p.sampling_fraction * n_max))
        zeta = p.inner_iterations or max(1, math.ceil(n_max / k))
        fill_bs = p.fill_batch_size
        plan = None
        if p.memory_budget:
            cells = max(g.n_patches for g in grids)
            plan = plan_memory(
                model,
                source.patch_size,
                cfg.schedule.batch_size,
                cells,
                m.latent_dim,
                p.memory_budget,
                optimizer=cfg.optim.name,
            )
            if k > plan.k:
                log(f"memory budget {p.memory_budget}: k {k} -> {plan.k}")
                k = plan.k
                if p.inner_iterations is None:
                    zeta = max(1, math.ceil(n_max / k))
            fill_bs = min(fill_bs, plan.fill_batch_size)
            log(f"memory budget {p.memory_budget}: k={k}, fill batch={fill_bs} ({plan.describe()})")
        return Setup(
            cfg=cfg,
            rows=rows,
            train_ids=train_ids,
            val_ids=val_ids,
            source=source,
            model=model.to(device),
            device=device,
            method=self,
            k=k,
            zeta=zeta,
            epsilon=p.epsilon or zeta,
            fill_batch_size=fill_bs,
            memory=plan,
        )

    def train_batch(
        self,
        setup: Setup,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        source: Any,
        batch: list[int],
        labels: torch.Tensor,
        rng: np.random.Generator | Sequence[np.random.Generator],
        loss_fn: LossFn,
        autocast: torch.dtype | None,
    ) -> Mapping[str, Any]:
        return train_batch(
            model,
            optimizer,
            source,
            batch,
            labels,
            self.sampler,
            setup.k,
            setup.zeta,
            setup.epsilon,
            rng,
            loss_fn,
            setup.fill_batch_size,
            autocast,
            scheduler,
        )

    def predict(
        self, setup: Setup, model: nn.Module, ids: list[int], autocast: torch.dtype | None
    ) -> torch.Tensor:
        return predict(model, setup.source, ids, setup.fill_batch_size, autocast)

    def steps_per_epoch(self, setup: Setup) -> int:
        s = setup.cfg.schedule
        return steps_per_epoch(len(setup.train_ids), s.batch_size, setup.zeta, setup.epsilon)

    def describe(self, setup: Setup) -> str:
        return f"k={setup.k}, zeta={setup.zeta}, epsilon={setup.epsilon}"

    def in_effect(self, setup: Setup) -> dict[str, int]:
        return {"k": setup.k, "zeta": setup.zeta, "epsilon": setup.epsilon}


class GD(TrainingMethod):
    """The standard gradient-descent baseline: the whole image, resized, through the backbone.

    Under ``patchgd.memory_budget`` the image side is the largest whose training step fits it
    (the same budget PatchGD runs under).
    """

    name = "gd"

    def build(
        self,
        cfg: RunConfig,
        rows: list[ManifestRow],
        train_ids: list[int],
        val_ids: list[int],
        device: torch.device,
        log: Log,
    ) -> Setup:
        m, p = cfg.model, cfg.patchgd
        so = cfg.data.storage_options or None
        urls = [r.store for r in rows]
        if p.memory_budget:
            p = replace(p, gd_image_size=gd_side_for_budget(cfg, urls, so, log))
            cfg = replace(cfg, patchgd=p)
        levels = gd_levels(urls, p.gd_image_size, so)
        source = StorePatchSource(
            urls,
            levels,
            cfg.data.patch_size,
            0.0,
            so,
            cache_dir=cfg.data.cache_dir,
            cache_size=cfg.data.cache_size,
            stream=StreamOptions(backend=cfg.data.remote_backend),
        )
        model = build_gd_model(
            m.backbone,
            m.num_classes,
            p.gd_image_size,
            m.latent_dim,
            m.weights,
            m.head_channels,
            m.head_convs,
            m.dropout,
            norm=p.norm,
            trainable=m.trainable,
        )
        return Setup(
            cfg=cfg,
            rows=rows,
            train_ids=train_ids,
            val_ids=val_ids,
            source=source,
            model=model.to(device),
            device=device,
            method=self,
            fill_batch_size=p.fill_batch_size,
        )

    def train_batch(
        self,
        setup: Setup,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        source: Any,
        batch: list[int],
        labels: torch.Tensor,
        rng: np.random.Generator | Sequence[np.random.Generator],
        loss_fn: LossFn,
        autocast: torch.dtype | None,
    ) -> Mapping[str, Any]:
        return gd_train_batch(
            model,
            optimizer,
            source,
            batch,
            labels,
            loss_fn,
            autocast_dtype=autocast,
            scheduler=scheduler,
        )

    def predict(
        self, setup: Setup, model: nn.Module, ids: list[int], autocast: torch.dtype | None
    ) -> torch.Tensor:
        return gd_predict(model, setup.source, ids, setup.cfg.schedule.batch_size, autocast)

    def steps_per_epoch(self, setup: Setup) -> int:
        return steps_per_epoch(len(setup.train_ids), setup.cfg.schedule.batch_size)

    def describe(self, setup: Setup) -> str:
        return f"image {setup.cfg.patchgd.gd_image_size}px"

    def summary(self, setup: Setup) -> dict[str, Any]:
        return {**super().summary(setup), "gd_image_size": setup.cfg.patchgd.gd_image_size}


METHODS: dict[str, type[TrainingMethod]] = {"patchgd": PatchGD, "gd": GD}


def method_for(cfg: RunConfig) -> TrainingMethod:
    """The training method ``cfg.patchgd.method`` names."""
    try:
        return METHODS[cfg.patchgd.method]()
    except KeyError:
        raise ConfigError(
            f"config key 'patchgd.method': {cfg.patchgd.method!r} is not one of "
            f"{', '.join(METHODS)}"
        ) from None


def gd_levels(urls: Sequence[str], size: int, storage_options: Any = None) -> list[int]:
    """Per store, the coarsest level whose shorter side is still >= ``size`` (else level 0)."""
    out = []
    for u in urls:
        s = SlideStore(u, storage_options)
        lv = 0
        for i in range(s.n_levels):
            if min(s.level_shape(i)) >= size:
                lv = i
        out.append(lv)
    return out


def gd_side_for_budget(cfg: RunConfig, urls: Sequence[str], so: Any, log: Log) -> int:
    """GD under ``patchgd.memory_budget``: the largest image side whose step fits it."""
    m, p = cfg.model, cfg.patchgd
    assert p.memory_budget is not None
    largest = max(max(SlideStore(u, so).level_shape(0)) for u in urls)
    probe = build_gd_model(
        m.backbone, m.num_classes, 64, m.latent_dim, None, m.head_channels, m.head_convs, 0.0,
        trainable=m.trainable,
    )  # fmt: skip
    side = plan_gd_image_size(
        probe,
        cfg.schedule.batch_size,
        p.memory_budget,
        min(p.gd_image_size, largest),
        optimizer=cfg.optim.name,
    )
    need = gd_step_bytes(probe, side, cfg.schedule.batch_size, cfg.optim.name)
    log(
        f"memory budget {p.memory_budget}: GD image size {side}px (asked {p.gd_image_size}px, "
        f"images up to {largest}px; a step needs ~{need / 1e6:.0f} MB)"
    )
    return side
