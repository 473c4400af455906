"""timm backbones (CNNs and ViTs) under PatchGD and GD, partial fine-tuning (model.trainable),
weights files, gradient checkpointing and the memory planner."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from wsi_patchgd.engine.model import build_gd_model, build_patchgd_model
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models import backbone_blocks, build_backbone, build_feature_map
from wsi_patchgd.training.build import build
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.memory import plan_memory
from wsi_patchgd.training.setup import make_optimizer
from wsi_patchgd.training.trainer import train

VIT = "timm:vit_tiny_patch16_224"
CNN = "timm:resnet10t"


def _trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def _saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd really keeps for backward (saved tensors, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return sum(seen.values())


@pytest.mark.parametrize("backbone", [CNN, VIT])
def test_patchgd_trains_two_epochs(tiny_dataset: Path, tmp_path: Path, backbone: str) -> None:
    overrides = [
        f"model.backbone={backbone}",
        f"output.dir={tmp_path / 'run'}",
        "schedule.epochs=2",
        "output.heatmaps=0",
        "model.trainable=1",
        "patchgd.memory_budget=1GB",  # k and the fill batch from the memory planner
    ]
    cfg = load_config(tiny_dataset / "config.yaml", overrides)
    torch.manual_seed(cfg.seed)  # what train() does before building: the same initial model
    lines: list[str] = []
    initial = build(cfg, log=lambda *a: lines.append(" ".join(map(str, a)))).model.state_dict()
    assert any("memory budget 1GB: k=" in x for x in lines), lines
    summary = train(cfg, quiet=True)
    assert summary["epochs"] == 2 and summary["val_accuracy"] is not None
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    assert all(r["train_loss"] == r["train_loss"] for r in recs)  # finite, not NaN
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    last = "layer4" if backbone == CNN else "blocks.11"
    first = "layer1" if backbone == CNN else "blocks.0"
    moved = [k for k in state if state[k].dtype.is_floating_point and k in initial
             and not torch.equal(state[k], initial[k])]  # fmt: skip
    weights = [k for k in moved if not k.endswith(("running_mean", "running_var"))]
    assert any(k.startswith(f"backbone.features.{last}.") for k in weights)
    assert any(k.startswith("backbone.proj.") for k in weights)
    assert not any(k.startswith(f"backbone.features.{first}.") for k in weights)
    if backbone == VIT:  # built at the stores' 32 px patches: 2 x 2 tokens + the class token
        assert tuple(state["backbone.features.pos_embed"].shape) == (1, 5, 192)


def test_trainable_freezes_blocks_optimizer_and_planner() -> None:
    def model(backbone: str, trainable: int | str) -> nn.Module:
        torch.manual_seed(0)
        return build_patchgd_model(
            backbone, 2, out_dim=16, head_channels=16, n_convs=2, patch_size=64,
            trainable=trainable,
        )  # fmt: skip

    cfg = load_config(None, ["data.manifest=m.csv"])
    for backbone, n, kept in [
        (VIT, 2, ("blocks.10.", "blocks.11.", "norm.")),
        (CNN, 1, ("layer4.",)),
        ("timm:mobilenetv3_small_050", 1, ("blocks.5.", "conv_head.")),
        ("mobilenet_v2", 2, ("features.17.", "features.18.")),
    ]:
        full, part = model(backbone, "all"), model(backbone, n)
        blocks = [b for b, _ in backbone_blocks(part.backbone.features)]  # type: ignore[arg-type]
        assert len(blocks) >= 4 and not blocks[0].startswith(kept)
        features = {k.removeprefix("features.") for k in _trainable(part.backbone)} - {
            "proj.weight", "proj.bias"
        }  # fmt: skip
        assert features and all(k.startswith(kept) for k in features), backbone
        assert {"proj.weight", "proj.bias"} <= _trainable(part.backbone)
        assert _trainable(part.head) == {n for n, _ in part.head.named_parameters()}
        # the optimizer gets exactly the trainable parameters
        opt = make_optimizer(cfg, part)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert in_opt == {id(p) for p in part.parameters() if p.requires_grad}
        # the planner counts gradients / optimizer state / backward activations of those only
        plan_full = plan_memory(full, 64, 2, 16, 16, "8GB")
        plan_part = plan_memory(part, 64, 2, 16, 16, "8GB")
        assert plan_part.fixed < plan_full.fixed and plan_part.k > plan_full.k
        assert plan_part.per_patch_grad < plan_full.per_patch_grad
    # 0: a linear probe, only the projection trains in the backbone
    probe = build_backbone(CNN, 8, patch_size=64, trainable=0)
    assert _trainable(probe) == {"proj.weight", "proj.bias"}


def test_trainable_errors_name_the_key(tmp_path: Path) -> None:
    for value in ("-1", "some", "true"):
        with pytest.raises(ConfigError, match="model.trainable"):
            load_config(None, ["data.manifest=m.csv", f"model.trainable={value}"])
    assert load_config(None, ["data.manifest=m.csv", "model.trainable=3"]).model.trainable == 3
    with pytest.raises(ConfigError, match=r"model.trainable' = 9, but timm:resnet10t has 4 "):
        build_backbone(CNN, 8, trainable=9)


def test_bad_names_give_one_error_naming_model_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, close in [("timm:resnet10tt", "timm:resnet10t"), ("resnet5O", "resnet50"),
                        ("timm:vit_tiny_patch16_22", "timm:vit_tiny_patch16_224")]:  # fmt: skip
        with pytest.raises(ConfigError, match="model.backbone") as info:
            build_backbone(name, 8)
        assert close in str(info.value) and "\n" not in str(info.value)
    # hf-hub names go to timm unchanged; here nothing can be downloaded: one clear error
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("timm:hf-hub:wsi-patchgd/no-such-model", "hf-hub:wsi-patchgd/no-such-model"):
        with pytest.raises(ConfigError, match="model.backbone.*network access"):
            build_backbone(name, 8)
    with pytest.raises(ConfigError, match="model.weights"):
        build_backbone(CNN, 8, weights="IMAGENET1K_V1")


def test_weights_files_of_timm_models(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=5)  # with classifier, 224
    path = tmp_path / "vit.pth"
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the classifier keys are expected: no warning
        vit = build_backbone(VIT, 8, weights=str(path), patch_size=64)
    own = vit.features.state_dict()
    assert tuple(own["pos_embed"].shape) == (1, 17, 192)  # resized from 197 tokens by timm
    torch.testing.assert_close(own["blocks.5.attn.qkv.weight"], reference.blocks[5].attn.qkv.weight)
    torch.testing.assert_close(own["cls_token"], reference.cls_token)
    # a saved Backbone (features + proj) round-trips exactly
    saved = tmp_path / "backbone.pt"
    torch.save({"state_dict": vit.state_dict()}, saved)
    again = build_backbone(VIT, 8, weights=str(saved), patch_size=64)
    x = torch.randn(2, 3, 64, 64)
    vit.eval(), again.eval()
    torch.testing.assert_close(again(x), vit(x))
    cnn = timm.create_model("resnet10t")
    cnn_path = tmp_path / "resnet10t.pth"
    torch.save(cnn.state_dict(), cnn_path)
    loaded = build_backbone(CNN, 8, weights=str(cnn_path))
    for key, value in loaded.features.state_dict().items():
        torch.testing.assert_close(value, cnn.state_dict()[key])
    with pytest.raises(ConfigError, match="missing keys"):
        build_backbone(CNN, 8, weights=str(path))


def test_vit_layernorm_has_no_train_eval_mismatch() -> None:
    torch.manual_seed(0)
    vit = build_backbone(VIT, 8, patch_size=64)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in vit.modules())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        train_out = vit.train()(x)
        torch.testing.assert_close(vit.eval()(x), train_out)


def test_checkpointing_uses_timms_and_keeps_outputs_and_gradients() -> None:
    torch.manual_seed(2)
    for name in (VIT, CNN):
        plain = build_backbone(name, 8, patch_size=32).double()
        ckpt = build_backbone(name, 8, patch_size=32, checkpointing=True).double()
        ckpt.load_state_dict(plain.state_dict())
        assert ckpt.features.grad_checkpointing
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        plain.train(), ckpt.train()
        out_plain, out_ckpt = plain(x), ckpt(x)
        torch.testing.assert_close(out_ckpt, out_plain)
        out_plain.square().sum().backward()
        out_ckpt.square().sum().backward()
        grads = dict(ckpt.named_parameters())
        for key, param in plain.named_parameters():
            torch.testing.assert_close(grads[key].grad, param.grad)


def test_gd_feature_maps_of_timm_cnns_and_vits() -> None:
    cnn = build_feature_map(CNN)
    assert cnn.channels == 512 and tuple(cnn(torch.zeros(1, 3, 128, 96)).shape) == (1, 512, 4, 3)
    vit = build_feature_map(VIT, trainable=1)  # patch tokens on their 16 px grid
    assert vit.channels == 192 and tuple(vit(torch.zeros(2, 3, 128, 96)).shape) == (2, 192, 8, 6)
    gd = build_gd_model(VIT, 2, 96, out_dim=8, head_channels=8, n_convs=1, trainable=1)
    assert all(k.startswith(("blocks.11.", "norm.")) for k in _trainable(gd.features.trunk.model))
    logits = gd(torch.randn(2, 3, 96, 96))
    logits.sum().backward()
    assert gd.features.trunk.model.blocks[11].mlp.fc1.weight.grad is not None


def test_memory_planner_measures_a_vit_sanely() -> None:
    """The planner's per-patch activation estimate against what autograd really saves."""
    ratios = {}
    for name in (VIT, CNN):
        torch.manual_seed(0)
        model = build_patchgd_model(name, 2, out_dim=16, head_channels=16, n_convs=2, patch_size=64)
        plan = plan_memory(model, 64, 2, 16, 16, "4GB")
        model.backbone.eval()
        real = _saved_activation_bytes(model.backbone, torch.randn(1, 3, 64, 64))
        ratios[name] = plan.per_patch_grad / real
        assert plan.k >= 1 and plan.fill_batch_size >= 1
    # conservative (the 1.5 factor on every leaf output) but not wildly so, and as for a CNN
    assert 1.0 <= ratios[VIT] <= 3.0, ratios
    assert 0.5 <= ratios[VIT] / ratios[CNN] <= 2.0, ratios


def test_group_norm_policy_keeps_timm_batchnormact_activations() -> None:
    """timm's BatchNormAct2d (MobileNetV3, EfficientNet) carries its activation: replacing it by
    a GroupNorm must keep the activation after the norm."""
    import timm

    from wsi_patchgd.models.norm import batchnorm_to_groupnorm

    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    bnact = [m for m in model.modules() if type(m).__name__ == "BatchNormAct2d"]
    acts = [type(m.act).__name__ for m in bnact]
    assert bnact and any(a != "Identity" for a in acts)
    n = batchnorm_to_groupnorm(model)
    assert n >= len(bnact)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    seqs = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Sequential) and m and isinstance(m[0], torch.nn.GroupNorm)
    ]
    kept = [type(m[-1]).__name__ for m in seqs]
    assert sorted(a for a in acts if a != "Identity") == sorted(
        a for a in kept if a != "GroupNorm" and a != "Identity"
    )
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape[0] == 2 and torch.isfinite(out).all()
