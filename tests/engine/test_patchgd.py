"""The PatchGD engine: exactness against the full-image gradient, and DESIGN §2's properties."""

from __future__ import annotations

import copy as copy_module
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from wsi_patchgd.engine import (
    PatchGDModel,
    PatchGDSettings,
    TensorPatchSource,
    build_patchgd_model,
    fill_latent,
    predict,
    train_batch,
)
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models import PooledHead, build_backbone
from wsi_patchgd.models.norm import backbone_modes
from wsi_patchgd.sampling import PermutationSampler


class TinyNet(nn.Module):
    """A small CNN with BatchNorm: (N, 3, P, P) -> (N, out_dim)."""

    def __init__(self, out_dim: int = 8) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.proj = nn.Linear(8, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x).mean(dim=(2, 3)))


class RecordingSource(TensorPatchSource):
    """Records every read: (image, indices, grad enabled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[int, np.ndarray, bool]] = []

    def read(self, image: int, indices: np.ndarray) -> Tensor:
        self.reads.append((image, np.array(indices), torch.is_grad_enabled()))
        return super().read(image, indices)


def _randomize_norms(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _images(shapes: list[tuple[int, int]], seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]


def _tiny_model(
    backbone: nn.Module | None = None, background: str = "zero", norm: str = "batch"
) -> PatchGDModel:
    backbone = backbone if backbone is not None else TinyNet(8)
    head = PooledHead(backbone.out_dim, 3, channels=8, n_convs=2, dropout=0.0)  # type: ignore[arg-type]
    return PatchGDModel(backbone, head, background=background, norm=norm)


def _grads(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_tensor_source_pads_white_and_reads_in_order() -> None:
    image = torch.arange(3 * 20 * 40, dtype=torch.int64).remainder(200).to(torch.uint8)
    source = TensorPatchSource([image.view(3, 20, 40)], patch_size=16)
    grid = source.grid(0)
    assert grid.shape == (2, 3) and grid.n_tissue == 6
    patches = source.read(0, np.array([5, 0]))
    assert patches.shape == (2, 3, 16, 16) and patches.dtype == torch.uint8
    torch.testing.assert_close(patches[1], image.view(3, 20, 40)[:, :16, :16])
    assert (patches[0][:, 4:, :] == 255).all() and (patches[0][:, :, 8:] == 255).all()
    with pytest.raises(ConfigError, match="tissue mask 0"):
        TensorPatchSource([image.view(3, 20, 40)], 16, tissue=[np.ones((3, 3), bool)])
    with pytest.raises(ConfigError, match="uint8"):
        TensorPatchSource([image.view(3, 20, 40).float()], 16)


@pytest.mark.parametrize(
    ("epsilon_is_zeta", "backbone_name"),
    [(True, "tiny"), (False, "tiny"), (True, "timm:resnet10t")],
)
def test_accumulated_gradients_equal_full_image_gradient(
    epsilon_is_zeta: bool, backbone_name: str
) -> None:
    """DESIGN §2's exactness property, in float64.

    With eval-mode normalisation the recomputed patches equal their filled values, so the latent
    seen by the head is the same full-image latent Z* at every inner iteration. Hence, with
    L = loss(g(Z*)) and the 1/epsilon scaling of every inner loss:
    - backbone: iteration j back-propagates only through its k fresh patches S_j, giving
      (1/eps) * sum_{p in S_j} dL/dz_p * df(x_p)/dtheta; the S_j partition the tissue patches
      (k * zeta = n_tissue), so the accumulated gradient is (1/eps) * dL/dtheta_f, i.e.
      eps * accumulated == full (zeta * accumulated == full when eps = zeta);
    - head and learned background: every iteration gives (1/eps) * dL/dtheta_g, so the
      accumulated gradient is (zeta / eps) * full (== full when eps = zeta).
    """
    torch.manual_seed(0)
    backbone: nn.Module = (
        TinyNet(8) if backbone_name == "tiny" else build_backbone(backbone_name, 8, patch_size=16)
    )
    _randomize_norms(backbone)
    model = _tiny_model(backbone, background="learned", norm="frozen").double()
    with torch.no_grad():
        model.background.normal_()
    tissue = np.ones((2, 4, 4), dtype=bool)
    tissue[0, 0, :2] = tissue[0, 3, 3] = tissue[0, 2, 1] = False
    tissue[1, 1, 1:3] = tissue[1, 3, :2] = False
    source = TensorPatchSource(_images([(64, 64), (60, 64)]), 16, tissue=list(tissue))
    labels = torch.tensor([2, 0])
    k, zeta = 4, 3  # k * zeta = 12 = tissue patches of each image
    epsilon = zeta if epsilon_is_zeta else 1
    assert all(source.grid(i).n_tissue == k * zeta for i in range(2))

    model.zero_grad(set_to_none=True)
    result = train_batch(
        model, None, source, [0, 1], labels, PermutationSampler(), k, zeta, epsilon,
        np.random.default_rng(7), F.cross_entropy, fill_batch_size=5,
    )  # fmt: skip
    # the frozen policy refreshed the running statistics before the fill, then nothing moved
    assert result["optimizer_steps"] == 0 and result["grad_patches"] == 2 * k * zeta
    backbone_acc, head_acc = _grads(model.backbone), _grads(model.head)
    background_acc = model.background.grad.clone()  # type: ignore[union-attr]

    model.zero_grad(set_to_none=True)
    with backbone_modes(model.backbone, True, eval_norm=True):
        latent = fill_latent(model, source, [0, 1], batch_size=32, grad=True)
        z, mask = latent.z, latent.valid
        full_loss = F.cross_entropy(model.head(z, mask), labels)
    full_loss.backward()
    backbone_full, head_full = _grads(model.backbone), _grads(model.head)
    background_full = model.background.grad
    assert background_full is not None

    assert backbone_acc.keys() == backbone_full.keys() and len(backbone_full) > 4
    for name, grad in backbone_full.items():
        torch.testing.assert_close(epsilon * backbone_acc[name], grad, rtol=1e-6, atol=1e-12)
    for name, grad in head_full.items():
        torch.testing.assert_close(head_acc[name], (zeta / epsilon) * grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(
        background_acc, (zeta / epsilon) * background_full, rtol=1e-6, atol=1e-12
    )
    for loss in result["losses"]:  # every inner iteration sees the full-image latent
        assert loss == pytest.approx(full_loss.item(), rel=1e-12)
    torch.testing.assert_close(result["latent"], z.detach(), rtol=1e-12, atol=1e-12)


def test_only_sampled_patches_carry_gradient() -> None:
    torch.manual_seed(1)
    model = _tiny_model()
    source = TensorPatchSource(_images([(48, 64), (64, 32)]), 16)
    calls: list[tuple[int, bool]] = []
    model.backbone.register_forward_hook(
        lambda m, args, out: calls.append((args[0].shape[0], torch.is_grad_enabled()))
    )
    dependent: list[set[tuple[int, int, int]]] = []
    weight = model.backbone.get_parameter("proj.weight")

    def cells_depending_on_backbone(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        z = args[0]
        found = set()
        for b, r, c in np.ndindex(z.shape[0], z.shape[2], z.shape[3]):
            (g,) = torch.autograd.grad(z[b, :, r, c].sum(), weight, retain_graph=True)
            if g.abs().sum() > 0:
                found.add((b, r, c))
        dependent.append(found)

    model.head.register_forward_pre_hook(cells_depending_on_backbone)
    k, zeta = 4, 4  # k divides both images' 12 and 8 patches: every iteration holds k per image
    result = train_batch(
        model, torch.optim.SGD(model.parameters(), lr=0.0), source, [0, 1], torch.tensor([0, 1]),
        PermutationSampler(), k, zeta, 2, np.random.default_rng(0), F.cross_entropy, 7,
    )  # fmt: skip
    with_grad = [n for n, grad in calls if grad]
    assert with_grad == [2 * k] * zeta  # exactly k fresh patches per image per iteration
    assert sum(n for n, grad in calls if not grad) == 12 + 8 == result["fill_patches"]
    assert result["grad_forward_calls"] == zeta and result["grad_patches"] == 2 * k * zeta
    grids = [source.grid(0), source.grid(1)]
    for j in range(zeta):
        expected = set()
        for b, idx in enumerate(result["sampled"][j]):
            rows, cols = grids[b].coords(idx)
            expected |= {(b, int(r), int(c)) for r, c in zip(rows, cols, strict=True)}
        assert dependent[j] == expected


def test_sampled_patches_distinct_and_cover_every_tissue_patch() -> None:
    tissue = np.ones((3, 5), dtype=bool)
    tissue[0, 0] = tissue[2, 4] = False  # 13 tissue patches
    source = RecordingSource(_images([(48, 80)]), 16, tissue=[tissue])
    model = _tiny_model()
    k = 4
    zeta = math.ceil(13 / k)
    train_batch(
        model, None, source, [0], torch.tensor([1]), PermutationSampler(), k, zeta, zeta,
        np.random.default_rng(3), F.cross_entropy, 64,
    )  # fmt: skip
    inner = [idx for _, idx, grad in source.reads if grad]
    assert len(inner) == zeta
    assert all(np.unique(idx).size == idx.size for idx in inner)
    np.testing.assert_array_equal(np.sort(np.concatenate(inner)), source.grid(0).tissue_indices())


class MeanNet(nn.Module):
    """Channel 0: the patch's mean normalised intensity; channel 1: 1000 when run with grad."""

    out_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([mean, torch.full_like(mean, 1000.0 * torch.is_grad_enabled())], 1)


def test_patches_are_written_at_their_own_cell_on_a_non_square_grid() -> None:
    values = (torch.arange(15, dtype=torch.uint8) * 16 + 5).view(3, 5)  # distinct per cell
    image = values.repeat_interleave(16, 0).repeat_interleave(16, 1).expand(3, -1, -1)
    source = TensorPatchSource([image.contiguous()], 16)
    model = PatchGDModel(MeanNet(), PooledHead(2, 2, channels=4, n_convs=1, dropout=0.0))
    expected = model.normalize(image[None]).mean(dim=1)[0, ::16, ::16]  # (3, 5) cell values
    seen: list[Tensor] = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    latent = fill_latent(model, source, [0], batch_size=4)
    z, mask = latent.z, latent.valid
    assert z.shape == (1, 2, 3, 5) and mask.all()
    torch.testing.assert_close(z[0, 0], expected)
    assert (z[0, 1] == 0).all()
    result = train_batch(
        model, None, source, [0], torch.tensor([0]), PermutationSampler(), 4, 4, 4,
        np.random.default_rng(5), F.cross_entropy, 4,
    )  # fmt: skip
    written = torch.zeros(3, 5, dtype=torch.bool)
    for j, zj in enumerate(seen):
        rows, cols = source.grid(0).coords(result["sampled"][j][0])
        written[rows, cols] = True  # this iteration's cells, and (persisting) every earlier one's
        assert torch.equal(zj[0, 1] == 1000.0, written)  # exactly those cells, untransposed
        torch.testing.assert_close(zj[0, 0], expected)


def test_padded_batch_predictions_equal_single_image_predictions() -> None:
    torch.manual_seed(2)
    tissue = [np.ones((3, 5), bool), np.ones((4, 2), bool)]
    tissue[0][1, 2] = tissue[1][0, 0] = False
    source = TensorPatchSource(_images([(48, 80), (50, 20)]), 16, tissue=tissue)
    model = _tiny_model(background="learned").double()
    _randomize_norms(model)
    with torch.no_grad():
        model.background.normal_()
    model.train()
    both = predict(model, source, [0, 1], batch_size=6)
    assert model.training  # mode restored
    assert both.shape == (2, 3)
    for i in range(2):
        torch.testing.assert_close(both[i : i + 1], predict(model, source, [i], batch_size=6))


def test_latent_shape_and_fill_never_runs_background() -> None:
    tissue = [np.ones((3, 5), bool), np.zeros((4, 2), bool)]
    tissue[0][0, 1:4] = False
    tissue[1][1:3, 1] = True
    source = RecordingSource(_images([(48, 80), (64, 32)]), 16, tissue=tissue)
    model = _tiny_model(background="learned")
    with torch.no_grad():
        model.background.fill_(7.0)
    inputs: list[int] = []
    model.backbone.register_forward_hook(lambda m, a, o: inputs.append(a[0].shape[0]))
    latent = fill_latent(model, source, [0, 1], batch_size=5)
    z, mask = latent.z, latent.valid
    assert z.shape == (2, 8, 4, 5) and mask.shape == (2, 4, 5)
    assert sum(inputs) == 12 + 2 and max(inputs) <= 5
    for image, idx, _ in source.reads:
        assert tissue[image].ravel()[idx].all()
    assert {(i, int(p)) for i, idx, _ in source.reads for p in idx} == {
        (i, int(p)) for i in range(2) for p in np.flatnonzero(tissue[i])
    }
    assert mask[0, :3].all() and not mask[0, 3].any() and mask[1, :, :2].all()
    assert not mask[1, :, 2:].any()
    assert (z[0, :, 0, 1:4] == 7.0).all() and (z[1, :, 0, 0] == 7.0).all()
    assert (z[0, :, 3] == 0).all() and (z[1, :, :, 2:] == 0).all()  # padding


def test_optimizer_steps_every_epsilon_and_at_the_end() -> None:
    model = _tiny_model()
    source = TensorPatchSource(_images([(32, 64)]), 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = train_batch(
        model, optimizer, source, [0], torch.tensor([1]), PermutationSampler(), 2, 5, 2,
        np.random.default_rng(0), F.cross_entropy, 8,
    )  # fmt: skip
    assert result["optimizer_steps"] == 3
    assert len(result["losses"]) == len(result["logits"]) == 5
    assert result["logits"][0].shape == (1, 3)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="epsilon=0"):
        train_batch(
            model, optimizer, source, [0], torch.tensor([1]), PermutationSampler(), 2, 5, 0,
            np.random.default_rng(0), F.cross_entropy, 8,
        )  # fmt: skip


def test_fill_moves_batchnorm_statistics_only_under_the_batch_policy() -> None:
    source = TensorPatchSource(_images([(32, 32)]), 16)
    for policy in ("batch", "frozen"):
        model = _tiny_model(norm=policy)
        model.train()
        norm = model.backbone.get_submodule("body.1")
        assert isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None
        before = norm.running_mean.clone()
        fill_latent(model, source, [0], batch_size=4)
        assert torch.equal(before, norm.running_mean) != (policy == "batch")
        assert model.backbone.training


def _brightness_data(n: int, seed: int) -> tuple[TensorPatchSource, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = [
        (torch.rand(3, 32, 32, generator=g) * 60 + 40 + 120 * int(y)).to(torch.uint8)
        for y in labels
    ]
    return TensorPatchSource(images, 16), labels


def test_patchgd_learns_a_tiny_problem() -> None:
    torch.manual_seed(0)
    source, labels = _brightness_data(8, seed=0)
    model = PatchGDModel(TinyNet(8), PooledHead(8, 2, channels=8, n_convs=1, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = PatchGDSettings(PermutationSampler(), k=2, zeta=2, epsilon=2, loss_fn=F.cross_entropy)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(12):
        for start in (0, 4):
            ids = list(range(start, start + 4))
            losses.append(
                trainer.train_batch(model, optimizer, source, ids, labels[ids], rng)["loss"]
            )
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    accuracy = (trainer.predict(model, source, list(range(8))).argmax(1) == labels).float().mean()
    assert accuracy == 1.0


def test_named_model_with_paper_head() -> None:
    torch.manual_seed(0)
    model = build_patchgd_model(
        "resnet18", 4, head="paper", out_dim=16, grid=(2, 3), head_channels=8
    )
    source = TensorPatchSource(_images([(64, 96), (64, 96)]), 32)
    result = train_batch(
        model, torch.optim.Adam(model.parameters()), source, [0, 1], torch.tensor([3, 1]),
        PermutationSampler(), 3, 2, 2, np.random.default_rng(0), F.cross_entropy, 4,
    )  # fmt: skip
    assert np.isfinite(result["loss"]) and result["optimizer_steps"] == 1
    assert predict(model, source, [0, 1], 4).shape == (2, 4)


def test_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    source = TensorPatchSource(_images([(32, 48), (48, 32)]), 16)
    result = train_batch(
        model, torch.optim.Adam(model.parameters()), source, [0, 1], torch.tensor([2, 1]),
        PermutationSampler(), 3, 2, 2, np.random.default_rng(0), F.cross_entropy, 4,
        autocast_dtype=torch.bfloat16,
    )  # fmt: skip
    assert np.isfinite(result["loss"]) and result["logits"][0].dtype == torch.float32
    logits = predict(model, source, [0, 1], 4, autocast_dtype=torch.bfloat16)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32


def test_distributed_wrapper_gives_the_same_gradients(tmp_path: Path) -> None:
    """train_batch drives the model through forward(), so DistributedDataParallel can wrap it."""
    torch.manual_seed(0)
    model = _tiny_model(background="learned")
    source = TensorPatchSource(_images([(32, 48), (48, 32)]), 16)
    copy = copy_module.deepcopy(model)  # the step moves BatchNorm statistics: start equal
    args = (source, [0, 1], torch.tensor([0, 2]), PermutationSampler(), 2, 3, 3)
    train_batch(model, None, *args, np.random.default_rng(0), F.cross_entropy, 4)
    plain = _grads(model)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        wrapped = DistributedDataParallel(copy)
        train_batch(wrapped, None, *args, np.random.default_rng(0), F.cross_entropy, 4)
        assert predict(wrapped, source, [0, 1], 4).shape == (2, 3)
    finally:
        dist.destroy_process_group()
    wrapped_grads = _grads(copy)
    assert wrapped_grads.keys() == plain.keys()
    for name, grad in wrapped_grads.items():
        torch.testing.assert_close(grad, plain[name])
