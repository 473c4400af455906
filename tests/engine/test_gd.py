"""The standard gradient-descent baseline on whole (resized) images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_patchgd.engine import (
    TensorPatchSource,
    build_gd_model,
    gd_predict,
    gd_train_batch,
    load_image,
)
from wsi_patchgd.errors import ConfigError


def _brightness_data(n: int, seed: int) -> tuple[TensorPatchSource, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = [
        (torch.rand(3, 32, 40, generator=g) * 60 + 40 + 120 * int(y)).to(torch.uint8)
        for y in labels
    ]
    return TensorPatchSource(images, 16), labels


def test_load_image_stitches_patches_with_white_padding() -> None:
    image = torch.randint(0, 200, (3, 30, 40), dtype=torch.uint8)
    whole = load_image(TensorPatchSource([image], 16), 0)
    assert whole.shape == (3, 32, 48)
    torch.testing.assert_close(whole[:, :30, :40], image)
    assert (whole[:, 30:] == 255).all() and (whole[:, :, 40:] == 255).all()


def test_gd_model_shapes_and_batch_independent_predictions() -> None:
    torch.manual_seed(0)
    model = build_gd_model("resnet18", 3, image_size=32, out_dim=8, head_channels=8, n_convs=1)
    x = model.prepare(
        [torch.zeros(3, 50, 70, dtype=torch.uint8), torch.zeros(3, 20, 20, dtype=torch.uint8)]
    )
    assert x.shape == (2, 3, 32, 32)
    source, _ = _brightness_data(3, seed=1)
    both = gd_predict(model, source, [0, 1, 2], batch_size=2)
    assert both.shape == (3, 3) and model.training
    torch.testing.assert_close(both[2:], gd_predict(model, source, [2], batch_size=1))
    with pytest.raises(ConfigError, match="image_size"):
        build_gd_model("resnet18", 3, image_size=0)


def test_gd_accumulates_over_micro_batches() -> None:
    torch.manual_seed(0)
    source, labels = _brightness_data(5, seed=2)
    model = build_gd_model("resnet18", 2, image_size=32, out_dim=8, head_channels=8, n_convs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = gd_train_batch(
        model, optimizer, source, list(range(5)), labels, F.cross_entropy, epsilon=1,
        micro_batch_size=3,
    )  # fmt: skip
    assert result["grad_forward_calls"] == 2 and result["optimizer_steps"] == 2
    assert len(result["logits"]) == 1 and result["logits"][0].shape == (5, 2)
    expected = np.average(result["losses"], weights=[3, 2])
    assert result["loss"] == pytest.approx(expected)


def test_gd_learns_a_tiny_problem() -> None:
    torch.manual_seed(0)
    source, labels = _brightness_data(8, seed=0)
    model = build_gd_model(
        "resnet18", 2, image_size=32, out_dim=8, head_channels=8, n_convs=1, dropout=0.0
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        for start in (0, 4):
            ids = list(range(start, start + 4))
            result = gd_train_batch(model, optimizer, source, ids, labels[ids], F.cross_entropy)
            losses.append(result["loss"])
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])


def test_frozen_policy_runs_gd_features_on_refreshed_running_statistics() -> None:
    import numpy as np
    import torch.nn.functional as F

    from wsi_patchgd.engine import TensorPatchSource, build_gd_model, gd_train_batch
    from wsi_patchgd.models.norm import norm_layers

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8) for _ in range(4)]
    source = TensorPatchSource(images, 16)
    model = build_gd_model("resnet18", 2, 64, 8, None, 8, 1, 0.0, norm="frozen")
    bn = norm_layers(model.features)
    modes: list[bool] = []
    bn[-1].register_forward_pre_hook(lambda m, a: modes.append(m.training))
    before = bn[0].running_var.clone()  # type: ignore[union-attr]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    gd_train_batch(model, opt, source, [0, 1, 2, 3], torch.tensor([0, 1, 0, 1]), F.cross_entropy)
    assert modes == [True, False]  # the refresh pass, then the step on running statistics
    assert not torch.equal(before, bn[0].running_var)  # statistics learned from the images
    assert np.isfinite(float(bn[0].running_var.mean()))  # type: ignore[union-attr]
