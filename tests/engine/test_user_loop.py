"""The engine in a user's own training loop: the caller zeroes and steps the optimizer.

The loop is the example of :mod:`wsi_patchgd.engine`'s docstring, run as it is written there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import wsi_patchgd.engine
from wsi_patchgd.engine import PatchGDSettings, TensorPatchSource, build_patchgd_model
from wsi_patchgd.sampling import PermutationSampler


def _docstring_example() -> str:
    doc = wsi_patchgd.engine.__doc__
    assert doc is not None and "Example::" in doc
    block = doc.split("Example::", 1)[1]
    lines = [line.removeprefix("    ") for line in block.splitlines()]
    return "\n".join(lines).strip() + "\n"


def _run_example() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(_docstring_example(), "engine-example", "exec"), namespace)
    return namespace


def _engine_steps() -> tuple[list[float], torch.nn.Module]:
    """The example's loop with the optimizer handed to the engine instead."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 1] * 4)
    images = [(torch.rand(3, 32, 32) * 60 + 40 + 120 * int(y)).to(torch.uint8) for y in labels]
    source = TensorPatchSource(images, patch_size=16)
    model = build_patchgd_model("resnet18", 2, out_dim=16, head_channels=16, n_convs=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    patchgd = PatchGDSettings(PermutationSampler(), k=2, zeta=2, epsilon=2, loss_fn=F.cross_entropy)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(8):
        for ids in ([0, 1, 2, 3], [4, 5, 6, 7]):
            result = patchgd.train_batch(model, optimizer, source, ids, labels[ids], rng)
            assert result["optimizer_steps"] == 1
            losses.append(result["loss"])
    return losses, model


def test_user_loop_learns_and_equals_the_engine_stepping_exactly() -> None:
    user = _run_example()
    losses: list[float] = user["losses"]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])  # a separable task: it learns
    assert (user["probs"].argmax(1) == user["labels"]).all()

    engine_losses, engine_model = _engine_steps()
    assert engine_losses == losses  # same seed: the same run, to the bit
    user_state = user["model"].state_dict()
    for name, value in engine_model.state_dict().items():
        assert torch.equal(value, user_state[name]), name


def test_without_an_optimizer_the_engine_only_accumulates() -> None:
    """``optimizer=None``: nothing is zeroed or stepped; a second call adds its gradients."""
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    source = TensorPatchSource(images, 16)
    model = build_patchgd_model(  # no statistics, no dropout: both calls compute the same
        "resnet18", 2, out_dim=8, head_channels=8, n_convs=1, dropout=0.0, norm="group"
    )
    patchgd = PatchGDSettings(PermutationSampler(), k=4, zeta=1, epsilon=1, loss_fn=F.cross_entropy)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = (source, [0, 1], torch.tensor([0, 1]))
    result = patchgd.train_batch(model, None, *args, np.random.default_rng(0))
    assert result["optimizer_steps"] == 0 and result["lrs"] == []
    once = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(once) == len(before)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    patchgd.train_batch(model, None, *args, np.random.default_rng(0))
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, 2 * once[name]), name
