"""The normalisation policy (DESIGN §2) and the persistence of fresh features in Z: the
training-time behaviour PatchGD depends on, not only its algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsi_patchgd.engine import (
    PatchGDModel,
    TensorPatchSource,
    build_patchgd_model,
    predict,
    train_batch,
)
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.backbones import build_backbone
from wsi_patchgd.models.heads import PooledHead
from wsi_patchgd.models.norm import batchnorm_to_groupnorm, norm_layers, refresh_statistics
from wsi_patchgd.sampling import PermutationSampler


def _images(n: int, side: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8) for _ in range(n)
    ]


def _model(norm: str, backbone: str = "resnet18") -> PatchGDModel:
    torch.manual_seed(0)
    return build_patchgd_model(backbone, 3, out_dim=8, head_channels=8, n_convs=1, norm=norm)


class _ModeRecorder:
    """Records, per backbone call, whether grad was on and which BatchNorms were training."""

    def __init__(self, model: PatchGDModel) -> None:
        self.calls: list[tuple[bool, bool]] = []
        self.bn = norm_layers(model.backbone)
        model.backbone.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: object) -> None:
        modes = {m.training for m in self.bn} or {module.training}
        assert len(modes) == 1, "all BatchNorm layers share one mode"
        self.calls.append((torch.is_grad_enabled(), modes.pop()))


@pytest.mark.parametrize(
    ("policy", "fill_train", "inner_train"),
    [("batch", True, True), ("frozen", False, False), ("group", True, True)],
)
def test_one_policy_decides_every_phase(policy: str, fill_train: bool, inner_train: bool) -> None:
    model = _model(policy)
    source = TensorPatchSource(_images(2), 16)
    rec = _ModeRecorder(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_batch(
        model, opt, source, [0, 1], torch.tensor([0, 1]), PermutationSampler(), 4, 2, 2,
        np.random.default_rng(0), F.cross_entropy, fill_batch_size=8,
    )  # fmt: skip
    fills = [train for grad, train in rec.calls if not grad]
    inner = [train for grad, train in rec.calls if grad]
    assert len(inner) == 2 and len(fills) >= 4
    if policy == "frozen":  # the first call is the statistics refresh (train-mode BatchNorm)
        assert fills[0] is True
        fills = fills[1:]
    assert set(fills) == {fill_train} and set(inner) == {inner_train}
    rec.calls.clear()
    predict(model, source, [0, 1], 8)
    assert rec.calls and all(not grad and not train for grad, train in rec.calls)
    if policy == "group":
        assert not norm_layers(model.backbone)
        assert any(isinstance(m, nn.GroupNorm) for m in model.backbone.modules())


def test_frozen_learns_running_statistics_from_scratch() -> None:
    """Random-init statistics (mean 0, var 1) are replaced by those of the data."""
    model = _model("frozen")
    bn = norm_layers(model.backbone)[0]
    source = TensorPatchSource(_images(4), 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: only statistics move
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    train_batch(
        model, opt, source, [0, 1, 2, 3], torch.tensor([0, 1, 2, 0]), PermutationSampler(), 4, 4,
        4, np.random.default_rng(0), F.cross_entropy, fill_batch_size=16,
    )  # fmt: skip
    x = model.normalize(torch.cat([source.read(i, np.arange(16)) for i in range(4)]))
    with torch.no_grad():
        first = model.backbone.features.conv1(x)
    assert bn.running_mean is not None and bn.running_var is not None
    torch.testing.assert_close(bn.running_mean, first.mean((0, 2, 3)), rtol=0.3, atol=0.05)
    ratio = bn.running_var / first.var((0, 2, 3))
    assert float(ratio.min()) > 0.5 and float(ratio.max()) < 2.0
    assert int(bn.num_batches_tracked) == 1


def test_refresh_statistics_keeps_other_modules_in_eval_mode() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.9))
    net.eval()
    seen: list[bool] = []
    net[2].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    assert refresh_statistics(net, torch.randn(4, 3, 8, 8))
    assert seen == [False] and not net[1].training
    assert not refresh_statistics(nn.Conv2d(3, 3, 1), torch.randn(2, 3, 4, 4))


def test_batchnorm_to_groupnorm_keeps_affine_parameters() -> None:
    net = nn.Sequential(nn.Conv2d(3, 24, 3), nn.BatchNorm2d(24), nn.Sequential(nn.BatchNorm2d(1)))
    with torch.no_grad():
        net[1].weight.uniform_()
    w = net[1].weight.clone()
    assert batchnorm_to_groupnorm(net) == 2
    gn = net[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 12 and torch.equal(gn.weight, w)
    assert isinstance(net[2][0], nn.GroupNorm) and net[2][0].num_groups == 1


def test_fresh_features_persist_in_z() -> None:
    """After inner iteration j the recomputed patches' features, from the weights of iteration
    j, stay in Z (the reference writes them in place after ``L1.detach()``); cells never
    recomputed keep their filled value."""
    model = _model("frozen")
    source = TensorPatchSource(_images(2), 16)
    k, zeta = 3, 4  # 12 of 16 patches recomputed per image
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots: list[dict[str, torch.Tensor]] = []
    opt.register_step_pre_hook(
        lambda o, a, kw: snapshots.append(
            {n: t.detach().clone() for n, t in model.state_dict().items()}
        )
    )
    seen: list[torch.Tensor] = []  # the latent the head sees at each inner iteration
    model.head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    res = train_batch(
        model, opt, source, [0, 1], torch.tensor([0, 2]), PermutationSampler(), k, zeta, 1,
        np.random.default_rng(3), F.cross_entropy, fill_batch_size=8,
    )  # fmt: skip
    assert len(snapshots) == zeta
    final = res["latent"]
    probe = _model("frozen")
    probe.eval()

    def feats(state: dict[str, torch.Tensor], image: int, idx: np.ndarray) -> torch.Tensor:
        probe.load_state_dict(state)
        with torch.no_grad():
            return probe.embed(source.read(image, idx))

    recomputed = np.zeros((2, 16), dtype=bool)
    for j in range(zeta):
        for b in range(2):
            idx = res["sampled"][j][b]
            recomputed[b, idx] = True
            rows, cols = source.grid(b).coords(idx)
            expect = feats(snapshots[j], b, idx)  # weights of iteration j (before its step)
            torch.testing.assert_close(final[b, :, rows, cols].T, expect, rtol=1e-4, atol=1e-5)
            if j + 1 < zeta:  # iteration j+1's head saw iteration j's fresh features
                torch.testing.assert_close(seen[j + 1][b, :, rows, cols].T, expect)
    for b in range(2):
        idx = np.flatnonzero(~recomputed[b])
        assert idx.size == 4
        rows, cols = source.grid(b).coords(idx)
        filled = feats(snapshots[0], b, idx)  # the fill: refreshed statistics, first weights
        torch.testing.assert_close(final[b, :, rows, cols].T, filled, rtol=1e-4, atol=1e-5)
    # the weights moved, so persisted features differ from a re-fill with the final weights
    idx = res["sampled"][0][0]
    rows, cols = source.grid(0).coords(idx)
    assert not torch.allclose(final[0, :, rows, cols].T, feats(model.state_dict(), 0, idx))


@pytest.mark.parametrize(
    "name",
    ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet18", "convnext_tiny",
     "squeezenet1_1", "densenet121", "googlenet", "vgg11", "mnasnet0_5", "shufflenet_v2_x0_5",
     "regnet_x_400mf", "alexnet", "inception_v3", "swin_t", "vit_b_16", "maxvit_t"],
)  # fmt: skip
def test_no_dropout_or_classifier_left_in_a_backbone(name: str) -> None:
    backbone = build_backbone(name, 8)
    dropouts = [
        n for n, m in backbone.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)
    ]
    assert dropouts == []
    linears = [n for n, m in backbone.features.named_modules() if isinstance(m, nn.Linear)]
    if name.startswith(("mobilenet", "efficientnet", "resnet", "densenet", "mnasnet", "regnet")):
        assert linears == [] or all("block" in n or ".fc" in n for n in linears)  # SE blocks
    if name == "mobilenet_v2":
        assert isinstance(backbone.features.classifier, nn.Identity)
        assert backbone.feature_dim == 1280


def test_unknown_policy_is_one_clear_error() -> None:
    head = PooledHead(8, 2, 8, 1, 0.0)
    with pytest.raises(ConfigError, match="norm policy 'instance'"):
        PatchGDModel(build_backbone("resnet18", 8), head, norm="instance")


def test_norm_momentum_sets_every_batchnorm_of_both_methods() -> None:
    from wsi_patchgd.engine import build_gd_model
    from wsi_patchgd.models.norm import set_momentum

    pg = _model("batch", "mobilenet_v3_small")
    gd = build_gd_model("mobilenet_v3_small", 3, 64, 8, None, 8, 1, 0.0)
    assert {m.momentum for m in norm_layers(pg.backbone)} == {0.01}  # torchvision's choice
    for model in (pg, gd):
        assert set_momentum(model, 0.1) > 10
        assert {m.momentum for m in norm_layers(model)} == {0.1}
    with pytest.raises(ConfigError, match="momentum"):
        set_momentum(pg, 0.0)
