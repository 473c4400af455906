"""Normalisation policies of a PatchGD backbone: one setting for filling, inner iterations and
evaluation (DESIGN §2).

The head of PatchGD learns on the latent ``Z``; if the backbone normalises the features of ``Z``
one way while filling it, another way for the fresh patches of the inner iterations and a third
way at validation, the head learns on features it never sees at validation. One policy decides
it for the whole backbone:

``frozen``
    BatchNorm on its running statistics everywhere (backbone in eval mode while filling, in
    inner iterations and at evaluation; no dropout or stochastic depth either): the features
    of a patch are the same whichever phase computes them. The running statistics are still
    learned: before each training batch's fill, :func:`refresh_statistics` runs the batch's
    first sampled patches through the backbone in train mode without gradient, which moves
    the running statistics towards those of the current weights (a cumulative average over the
    first ``warmup`` refreshes, BatchNorm's momentum after that). Within a batch nothing moves,
    so the float64 exactness property of DESIGN §2 holds.
``batch``
    The reference code (nyunAI/PatchGD): train mode while filling and in inner iterations
    (batch statistics, running statistics updated on every backbone call), eval mode (running
    statistics) at evaluation.
``group``
    Every BatchNorm replaced by GroupNorm (:func:`batchnorm_to_groupnorm`, affine parameters
    kept): no statistics at all, identical in every phase; for training from scratch with
    small patch batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError

__all__ = [
    "NORM_POLICIES",
    "backbone_modes",
    "batchnorm_to_groupnorm",
    "check_policy",
    "norm_layers",
    "phase_mode",
    "refresh_statistics",
    "set_momentum",
]

NORM_POLICIES = ("frozen", "batch", "group")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`NORM_POLICIES`.

    Raises:
        ConfigError: For another value.
    """
    if policy not in NORM_POLICIES:
        raise ConfigError(f"norm policy {policy!r} is invalid; choose one of {NORM_POLICIES}")
    return policy


def norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` (those with running statistics)."""
    return [m for m in module.modules() if isinstance(m, _BATCHNORMS)]


def _groups(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is <= ``max_groups`` and leaves >= 2 channels
    per group (1 for a single channel)."""
    for g in range(min(max_groups, channels // 2), 0, -1):
        if channels % g == 0:
            return g
    return 1


def batchnorm_to_groupnorm(module: nn.Module, max_groups: int = 32) -> int:
    """Replace every BatchNorm of ``module`` by a GroupNorm (in place); return how many.

    The GroupNorm has the BatchNorm's affine weight and bias (loaded weights keep their scale
    and shift; running statistics are dropped) and :func:`_groups` groups.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, _BATCHNORMS) and child.num_features > 0:
            c = child.num_features
            gn = nn.GroupNorm(_groups(c, max_groups), c, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
            gn.train(child.training)
            # timm's BatchNormAct2d is a BatchNorm that also applies its dropout and activation
            # (MobileNetV3, EfficientNet): keep them after the GroupNorm
            extra = [
                getattr(child, a)
                for a in ("drop", "act")
                if isinstance(getattr(child, a, None), nn.Module)
            ]
            new: nn.Module = nn.Sequential(gn, *extra) if extra else gn
            new.train(child.training)
            setattr(module, name, new)
            count += 1
        else:
            count += batchnorm_to_groupnorm(child, max_groups)
    return count


@contextmanager
def phase_mode(module: nn.Module, policy: str, training: bool) -> Iterator[None]:
    """Put the backbone ``module`` in the mode ``policy`` gives a phase, then restore it.

    Args:
        module: The backbone.
        policy: One of :data:`NORM_POLICIES`.
        training: True for the training phases (fill and inner iterations), False for
            evaluation (always eval mode).
    """
    saved = [(m, m.training) for m in module.modules()]
    module.train(training and check_policy(policy) != "frozen")
    try:
        yield
    finally:
        for m, was in saved:
            m.training = was


@contextmanager
def backbone_modes(module: nn.Module, train: bool, eval_norm: bool = False) -> Iterator[None]:
    """Set ``module`` to train/eval mode (BatchNorm in eval if ``eval_norm``), then restore.

    A low-level helper (tests); training uses a policy through :func:`phase_mode`.
    """
    saved = [(m, m.training) for m in module.modules()]
    module.train(train)
    if train and eval_norm:
        for layer in norm_layers(module):
            layer.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@torch.no_grad()
def refresh_statistics(module: nn.Module, x: Tensor, warmup: int = 10) -> bool:
    """Move the running statistics of ``module``'s BatchNorm layers towards those of ``x``.

    One train-mode forward pass without gradient; every other module (dropout, stochastic
    depth) is kept in eval mode. For the first ``warmup`` refreshes of a layer its statistics
    are the cumulative average of the refreshes (so random-init statistics are replaced at
    once), then BatchNorm's own momentum applies.

    Args:
        module: The backbone.
        x: Normalised input patches ``(N, 3, P, P)``.
        warmup: Refreshes averaged cumulatively.

    Returns:
        False (nothing done) if ``module`` has no BatchNorm with running statistics.
    """
    layers = [m for m in norm_layers(module) if m.track_running_stats]
    if not layers or x.shape[0] == 0:
        return False
    saved = [(m, m.training) for m in module.modules()]
    momenta = [(m, m.momentum) for m in layers]
    module.eval()
    for m in layers:
        m.train()
        tracked = int(m.num_batches_tracked) if m.num_batches_tracked is not None else warmup
        if tracked < warmup:
            m.momentum = None  # cumulative average
    try:
        module(x)
    finally:
        for mod, was in saved:
            mod.training = was
        for m, mom in momenta:
            m.momentum = mom
    return True


def average_running_statistics(module: nn.Module) -> bool:
    """Average the BatchNorm running statistics of ``module`` over the processes of a
    ``torch.distributed`` job (all ranks must call it); no-op in a single process.

    Under the ``frozen`` policy each process refreshes the statistics from its own slides; the
    average makes every process fill Z with the same statistics (the mean over processes of each
    layer's running mean and variance).

    Returns:
        True when statistics were averaged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return False
    stats = [
        t
        for m in norm_layers(module)
        if m.track_running_stats
        for t in (m.running_mean, m.running_var)
        if t is not None
    ]
    if not stats:
        return False
    flat = torch.cat([t.detach().reshape(-1).float() for t in stats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in stats:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
    return True


def set_momentum(module: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm in ``module``; return how many.

    torchvision's MobileNetV3 and EfficientNet use 0.01 and MNASNet 0.0003, which leave the
    running statistics (used at evaluation) far behind the weights in a short run.
    """
    if not 0 < momentum <= 1:
        raise ConfigError(f"BatchNorm momentum {momentum} must be in (0, 1]")
    layers = norm_layers(module)
    for m in layers:
        m.momentum = momentum
    return len(layers)
