"""Backbones (any torchvision model, weights files, checkpointing) and latent heads."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models import (
    MaskedBatchNorm2d,
    PaperHead,
    PooledHead,
    build_backbone,
    build_feature_map,
    build_head,
)


def _randomize_norms(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, so that eval-mode BatchNorm is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("size", [32, 64])
def test_backbones_give_out_dim(name: str, size: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, out_dim=256)
    out = backbone(torch.randn(3, 3, size, size))
    assert out.shape == (3, 256)
    assert isinstance(backbone.proj, nn.Linear) and backbone.proj.out_features == 256


def test_classifier_removed_generically() -> None:
    backbone = build_backbone("resnet18", out_dim=16)
    assert isinstance(backbone.features.fc, nn.Identity) and backbone.feature_dim == 512
    mobile = build_backbone("mobilenet_v2", out_dim=16)
    # the whole classifier block goes, Dropout(0.2) included
    assert isinstance(mobile.features.classifier, nn.Identity) and mobile.feature_dim == 1280


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="resnet50") as info:
        build_backbone("resnet5O")
    assert "\n" not in str(info.value)


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", weights="IMAGENET_BOGUS")
    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), other)
    with pytest.raises(ConfigError, match="missing keys"):
        build_backbone("resnet18", weights=str(other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        build_backbone("resnet18", weights=str(junk))


def test_weights_from_torchvision_and_own_state_dicts(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18_tv.pth"
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the removed fc.* keys are expected: no warning
        backbone = build_backbone("resnet18", out_dim=8, weights=str(path))
    for key, value in backbone.features.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key])
    own = tmp_path / "backbone.pt"
    torch.save({"state_dict": backbone.state_dict()}, own)
    again = build_backbone("resnet18", out_dim=8, weights=str(own))
    x = torch.randn(2, 3, 32, 32)
    backbone.eval(), again.eval()
    torch.testing.assert_close(again(x), backbone(x))
    with pytest.raises(ConfigError, match="out_dim"):
        build_backbone("resnet18", out_dim=4, weights=str(own))
    extra = tmp_path / "extra.pth"
    torch.save({**reference.state_dict(), "surplus.weight": torch.zeros(1)}, extra)
    with pytest.warns(UserWarning, match="surplus.weight"):
        build_backbone("resnet18", out_dim=8, weights=str(extra))


def test_checkpointing_gives_same_outputs_and_gradients() -> None:
    torch.manual_seed(2)
    plain = build_backbone("resnet18", out_dim=8).double()
    ckpt = build_backbone("resnet18", out_dim=8, checkpointing=True).double()
    ckpt.load_state_dict(plain.state_dict())  # same keys despite the checkpoint wrappers
    assert type(ckpt.features.layer1).__name__ == "CheckpointedSequential"
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    out_plain, out_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    grads = dict(ckpt.named_parameters())
    for name, param in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad)


def test_feature_map_is_spatial() -> None:
    fmap = build_feature_map("resnet18")
    assert fmap.node.startswith("layer4") and fmap.channels == 512
    assert fmap(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)
    mobile = build_feature_map("mobilenet_v2")
    assert mobile(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (7, 2)])
def test_pooled_head_accepts_any_grid(grid: tuple[int, int]) -> None:
    head = PooledHead(16, 4, channels=8)
    assert head(torch.randn(2, 16, *grid), None).shape == (2, 4)


def _padded(zs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n_h = max(z.shape[1] for z in zs)
    n_w = max(z.shape[2] for z in zs)
    batch = torch.zeros(len(zs), zs[0].shape[0], n_h, n_w, dtype=zs[0].dtype)
    mask = torch.zeros(len(zs), n_h, n_w, dtype=torch.bool)
    for i, z in enumerate(zs):
        batch[i, :, : z.shape[1], : z.shape[2]] = z
        mask[i, : z.shape[1], : z.shape[2]] = True
    return batch, mask


def test_pooled_head_padded_batch_equals_single_images() -> None:
    torch.manual_seed(3)
    head = PooledHead(6, 3, channels=8, n_convs=3).double()
    _randomize_norms(head)
    head.eval()
    zs = [torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(6, 4, 2, dtype=torch.float64)]
    batch, mask = _padded(zs)
    batch[:, :, :, :][~mask[:, None].expand_as(batch)] = 123.0  # junk in padded cells
    logits = head(batch, mask)
    for i, z in enumerate(zs):
        torch.testing.assert_close(logits[i : i + 1], head(z[None], None))


def test_masked_batchnorm_ignores_padding_in_training() -> None:
    torch.manual_seed(4)
    head = PooledHead(4, 2, channels=5, n_convs=2, dropout=0.0).double()
    alone = PooledHead(4, 2, channels=5, n_convs=2, dropout=0.0).double()
    alone.load_state_dict(head.state_dict())
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    batch, mask = _padded([z[0], torch.zeros(4, 5, 6, dtype=torch.float64)])
    batch, mask = batch[:1], mask[:1]  # image alone, padded to a larger grid
    torch.testing.assert_close(head(batch, mask), alone(z, None))
    for a, b in zip(head.modules(), alone.modules(), strict=True):
        if isinstance(a, MaskedBatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)


def test_paper_head_is_tied_to_its_grid() -> None:
    head = PaperHead(16, 10, grid=(16, 16), channels=8)
    assert head.fc.in_features == 8 * 2 * 2  # 16 -> 8 -> 4 -> 2
    assert head(torch.randn(2, 16, 16, 16)).shape == (2, 10)
    assert PaperHead(4, 3, grid=(5, 9), channels=2)(torch.randn(1, 4, 5, 9)).shape == (1, 3)
    with pytest.raises(ConfigError, match=r"built for grid \(16, 16\)"):
        head(torch.randn(2, 16, 8, 12))
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    mask[1, -1] = False
    with pytest.raises(ConfigError, match="padded"):
        head(torch.randn(2, 16, 16, 16), mask)


def test_build_head() -> None:
    assert isinstance(build_head("pooled", 8, 3), PooledHead)
    assert isinstance(build_head("paper", 8, 3, grid=(4, 4)), PaperHead)
    with pytest.raises(ConfigError, match="grid"):
        build_head("paper", 8, 3)
    with pytest.raises(ConfigError, match="pooled, paper"):
        build_head("attention", 8, 3)
