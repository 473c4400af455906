"""The training loop: PatchGD (or the GD baseline) over the slides of a manifest.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch: loss,
accuracy and QWK on train and validation), ``checkpoints/last.pt`` and ``best.pt`` (model,
optimizer, scheduler, epoch, sampler / shuffle / torch RNG states), ``plots/curves.png``,
``plots/heatmap-<slide>.png`` and ``summary.json`` / ``summary.md``.

``resume=True`` continues from ``last.pt`` with every RNG restored, so a killed run finishes
with the same weights and metrics as an uninterrupted one (on CPU, deterministic mode).

The method-specific parts (one batch, prediction, settings) are in :mod:`.methods`; building a
run in :mod:`.build`; evaluation and heat maps in :mod:`.evaluate`; the summary in
:mod:`.report`; checkpoint contents and the resume check in :mod:`.resume`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..augment import AugmentedSource
from ..errors import ConfigError
from ..plots import plot_curves, read_metrics
from .build import build
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, save_config
from .evaluate import evaluate_ids
from .metrics import qwk
from .report import diverged, finish, fmt, plot_or_warn
from .resume import check_resumable, checkpoint_state, load_error
from .setup import augmenter, describe, make_optimizer, make_scheduler


def train(cfg: RunConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a run; returns the summary (also written to the run directory).

    Raises:
        ConfigError: bad config, manifest problems, a run already in the output directory, a
            resume whose config does not fit the checkpoint (``config.yaml`` is then untouched).
        TrainingDivergedError: a NaN or infinite loss or weights; nothing of that epoch is saved.
    """
    out = Path(cfg.output.dir)
    ckpt_dir, plots = out / "checkpoints", out / "plots"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out}: holds a run already; use --resume or another output.dir")
    if resume and not last.exists():
        raise ConfigError(f"{out}: nothing to resume (no checkpoints/last.pt)")

    def log(*a: Any) -> None:  # a line per step; quiet only turns the bars off
        print(*a, file=sys.stderr, flush=True)

    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    setup = build(cfg, log=log)
    st = load_checkpoint(last) if resume else None
    if st is not None:  # before anything in the run directory changes
        check_resumable(setup, st, last)
    out.mkdir(parents=True, exist_ok=True)
    plots.mkdir(exist_ok=True)
    model = setup.model
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(setup, opt)
    shuffle_rng = np.random.default_rng(cfg.seed)
    sampler_rng = np.random.default_rng(cfg.seed + 1)
    augment_rng = np.random.default_rng(cfg.seed + 2)
    augment = augmenter(cfg)
    start, best = 0, -math.inf
    metrics_path = out / "metrics.jsonl"
    if st is not None:
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            why = load_error(exc)
            raise ConfigError(
                f"{last}: does not fit this run's model and optimizer ({why}); train into a "
                "new output.dir"
            ) from exc
        shuffle_rng.bit_generator.state = st["rng"]["shuffle"]
        sampler_rng.bit_generator.state = st["rng"]["sampler"]
        augment_rng.bit_generator.state = st["rng"]["augment"]
        torch.set_rng_state(st["rng"]["torch"])
        start, best = st["epoch"] + 1, st["best"]
        kept = [r for r in read_metrics(metrics_path) if r["epoch"] < start]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log(f"resuming {out} at epoch {start + 1}")
    elif metrics_path.exists():
        metrics_path.unlink()
    save_config(cfg, out / "config.yaml")
    loss_fn = nn.functional.cross_entropy
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    bs = cfg.schedule.batch_size
    method = setup.method
    log(describe(setup))
    t_start = time.perf_counter()
    from tqdm import tqdm

    for epoch in range(start, cfg.schedule.epochs):
        t0 = time.perf_counter()
        order = shuffle_rng.permutation(setup.train_ids).tolist()
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        tot_loss, correct, seen, correct_last, n_img = 0.0, 0, 0, 0, 0
        lrs: list[float] = []
        y_all: list[int] = []
        p_all: list[int] = []
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
            file=sys.stderr,
            disable=quiet,
            leave=False,
        )
        for b_i, batch in enumerate(bar):
            labels = torch.tensor([setup.rows[i].label for i in batch])
            source: Any = setup.source
            if augment.enabled:  # one draw per image, the same transform for grid and patches
                source = AugmentedSource(source, {i: augment.draw(augment_rng) for i in batch})
            res = method.train_batch(
                setup, opt, sched, source, batch, labels, sampler_rng, loss_fn, autocast
            )
            # training accuracy of the last inner iteration (comparable with validation) and
            # the average over every inner iteration
            for lg in res["logits"]:
                pred = lg.argmax(1)
                correct += int((pred == labels).sum())
                seen += len(batch)
            correct_last += int((res["logits"][-1].argmax(1) == labels).sum())
            lrs += res["lrs"]
            y_all += labels.tolist()
            p_all += res["logits"][-1].argmax(1).tolist()
            if not math.isfinite(res["loss"]):
                bar.close()
                raise diverged(cfg, last, f"the loss is {res['loss']}", epoch, b_i, len(batches))
            tot_loss += res["loss"] * len(batch)
            n_img += len(batch)
            bar.set_postfix(loss=f"{tot_loss / n_img:.3f}")
        bad = next((n for n, t in model.state_dict().items() if not bool(t.isfinite().all())), "")
        if bad:  # the last step can blow up the weights while its loss was still finite
            raise diverged(cfg, last, f"weight {bad} is not finite", epoch, None, len(batches))
        val = evaluate_ids(setup, setup.val_ids)
        rec: dict[str, Any] = {
            "epoch": epoch,
            "lr": float(np.mean(lrs)) if lrs else opt.param_groups[0]["lr"],  # rates used
            "lr_last": lrs[-1] if lrs else opt.param_groups[0]["lr"],
            "optimizer_steps": len(lrs),
            "train_loss": tot_loss / max(n_img, 1),
            "train_accuracy": correct_last / max(n_img, 1),
            "train_accuracy_all_iterations": correct / max(seen, 1),
            "train_qwk": qwk(np.array(y_all), np.array(p_all), cfg.model.num_classes),
            "val_loss": val.get("loss"),
            "val_accuracy": val.get("accuracy"),
            "val_qwk": val.get("qwk"),
            "seconds": time.perf_counter() - t0,
        }
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        score = rec["val_qwk"] if rec["val_qwk"] is not None else -rec["train_loss"]
        if cfg.model.num_classes == 2 and rec["val_accuracy"] is not None:
            score = rec["val_accuracy"]
        rngs = {
            "shuffle": shuffle_rng.bit_generator.state,
            "sampler": sampler_rng.bit_generator.state,
            "augment": augment_rng.bit_generator.state,
            "torch": torch.get_rng_state(),
        }
        improved = score > best
        best = max(best, score)
        if improved:
            save_checkpoint(
                ckpt_dir / "best.pt", checkpoint_state(setup, opt, sched, epoch, rngs, best)
            )
        if (epoch + 1) % cfg.output.checkpoint_every == 0 or epoch + 1 == cfg.schedule.epochs:
            save_checkpoint(last, checkpoint_state(setup, opt, sched, epoch, rngs, best))
        plot_or_warn(
            log,
            plots / "curves.png",
            lambda: plot_curves(
                read_metrics(metrics_path), plots / "curves.png", f"{method.name} {out.name}"
            ),
        )
        log(
            f"epoch {epoch + 1}: train loss {rec['train_loss']:.4f} acc "
            f"{rec['train_accuracy']:.3f} | val loss {fmt(rec['val_loss'])} acc "
            f"{fmt(rec['val_accuracy'])} qwk {fmt(rec['val_qwk'])} ({rec['seconds']:.1f} s)"
        )
    return finish(setup, out, metrics_path, time.perf_counter() - t_start, log)
