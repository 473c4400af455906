"""The learning-rate schedule runs per optimizer step (warm-up in steps, decay that does not
reach zero in a short run) and the epoch's logged rate is the one its steps used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.schedule import build_scheduler, lr_factor, steps_per_epoch
from wsi_patchgd.training.trainer import train


def test_steps_per_epoch_counts_optimizer_steps() -> None:
    assert steps_per_epoch(10, 4) == 3
    assert steps_per_epoch(10, 4, zeta=8, epsilon=8) == 3
    assert steps_per_epoch(10, 4, zeta=8, epsilon=3) == 9  # ceil(8 / 3) steps per batch


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_warmup_then_decay_that_ends_above_zero(kind: str) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, per_epoch=5, epochs=4, kind=kind, warmup_epochs=1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])  # 5 warm-up steps
    assert lrs[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))  # decays every step
    assert 0.3 < lrs[-1] < 0.7  # decay_factor 2: about half the peak at the end, never 0
    assert lr_factor(10**6, 5, 20, kind) > 0


def test_warmup_steps_wins_and_bad_decay_factor_is_refused(tmp_path: Path) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    build_scheduler(opt, 5, 4, "constant", warmup_epochs=3, warmup_steps=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="decay_factor"):
        load_config(None, ["data.manifest=m.csv", "schedule.decay_factor=0.5"])
    with pytest.raises(ConfigError, match="replaced by patchgd.norm"):
        load_config(None, ["data.manifest=m.csv", "patchgd.eval_norm=true"])
    with pytest.raises(ConfigError, match="patchgd.norm"):
        load_config(None, ["data.manifest=m.csv", "patchgd.norm=instance"])


def test_logged_rate_is_the_rate_the_epoch_used(tiny_dataset: Path) -> None:
    cfg = load_config(
        tiny_dataset / "config.yaml",
        ["output.dir=runs/sched", "schedule.epochs=2", "schedule.warmup_epochs=1",
         "output.heatmaps=0", "patchgd.inner_iterations=2", "patchgd.epsilon=1"],
    )  # fmt: skip
    train(cfg, quiet=True)
    recs = [
        json.loads(x) for x in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines()
    ]
    per_epoch = steps_per_epoch(6, 4, zeta=2, epsilon=1)  # 6 training slides, batch 4
    assert [r["optimizer_steps"] for r in recs] == [per_epoch, per_epoch]
    lr = cfg.optim.lr
    warm = [lr * (i + 1) / (per_epoch + 1) for i in range(per_epoch)]
    assert recs[0]["lr"] == pytest.approx(sum(warm) / per_epoch)  # epoch 1: the warm-up
    assert recs[0]["lr_last"] == pytest.approx(warm[-1])
    assert recs[1]["lr"] < lr and recs[1]["lr"] > 0.5 * lr  # epoch 2: decaying from the peak
    for r in recs:  # last-iteration and all-iterations training accuracy, both logged
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["train_accuracy_all_iterations"] <= 1


def test_model_norm_momentum_reaches_the_built_model(tiny_dataset: Path) -> None:
    from wsi_patchgd.models.norm import norm_layers
    from wsi_patchgd.training.build import build

    for method in ("patchgd", "gd"):
        cfg = load_config(
            tiny_dataset / "config.yaml",
            [f"patchgd.method={method}", "model.norm_momentum=0.1", "output.dir=runs/mom"],
        )
        setup = build(cfg, log=lambda *a: None)
        assert {m.momentum for m in norm_layers(setup.model)} == {0.1}
