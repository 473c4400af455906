"""The training loop: PatchGD (or the GD baseline) over the slides of a manifest.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch: loss,
accuracy and QWK on train and validation), ``checkpoints/last.pt`` and ``best.pt`` (model,
optimizer, scheduler, epoch, sampler / shuffle / torch RNG states), ``plots/curves.png``,
``plots/heatmap-<slide>.png`` and ``summary.json`` / ``summary.md``.

``resume=True`` continues from ``last.pt``; every random draw that shapes training (the
shuffled order, patch sampling, augmentation) is keyed by (seed, epoch, slide) and the torch
generator (dropout) is restored, so a killed run finishes with the same weights and metrics as an
uninterrupted one (on CPU, deterministic mode), and the outcome does not depend on the number
of processes that ran it: under ``torchrun`` (:mod:`.distributed`) each process trains on its
share of every global batch.

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
from .distributed import Dist, init_distributed, shutdown, warn, wrap
from .evaluate import evaluate_ids
from .metrics import qwk
from .report import diverged, finish, fmt, plot_or_warn
from .resume import check_resumable, checkpoint_state, load_error
from .setup import Setup, augmenter, describe, make_optimizer, make_scheduler

#: independent random streams of a run, keyed with (seed, stream, epoch, slide)
SHUFFLE, SAMPLER, AUGMENT = 0, 1, 2


def keyed_rng(seed: int, stream: int, epoch: int, slide: int = -1) -> np.random.Generator:
    """The generator of one stream for one epoch (and slide): the same in every process, in
    every batch an image lands in, and after a resume."""
    return np.random.default_rng([seed, stream, epoch, slide + 1])


def train(cfg: RunConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a run; returns the summary (also written to the run directory).

    Under ``torchrun`` every process calls this; they share each batch and rank 0 writes.

    Raises:
        ConfigError: bad config, manifest problems, a run already in the output directory, a
            resume whose config does not fit the checkpoint (``config.yaml`` is then untouched).
        TrainingDivergedError: a NaN or infinite loss or weights; nothing of that epoch is saved.
    """
    d = init_distributed(cfg.device)
    try:
        return _train(cfg, d, resume, quiet)
    finally:
        shutdown(d)


def _train(cfg: RunConfig, d: Dist, resume: bool, quiet: bool) -> dict[str, Any]:
    out = Path(cfg.output.dir)
    ckpt_dir, plots = out / "checkpoints", out / "plots"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out}: holds a run already; use --resume or another output.dir")
    if resume and not last.exists():
        raise ConfigError(f"{out}: nothing to resume (no checkpoints/last.pt)")

    def log(*a: Any) -> None:  # a line per step (rank 0); quiet only turns the bars off
        if d.main:
            print(*a, file=sys.stderr, flush=True)

    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    setup = build(cfg, log=log)
    st = load_checkpoint(last) if resume else None
    if st is not None:  # before anything in the run directory changes
        check_resumable(setup, st, last)
    d.barrier()  # every process has read the old state before rank 0 changes it
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        plots.mkdir(exist_ok=True)
    model = setup.model
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(setup, opt)
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
        states = st["rng"].get("torch_ranks") or [st["rng"]["torch"]]
        torch.set_rng_state(states[d.rank] if len(states) == d.world else states[0])
        start, best = st["epoch"] + 1, st["best"]
        if d.main:
            kept = [r for r in read_metrics(metrics_path) if r["epoch"] < start]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log(f"resuming {out} at epoch {start + 1}")
    elif d.main and metrics_path.exists():
        metrics_path.unlink()
    if d.main:
        save_config(cfg, out / "config.yaml")
    net = wrap(model, d, setup.device)
    title = f"{setup.method.name} {out.name}"
    log(describe(setup) + (f"; {d.world} processes" if d.enabled else ""))
    t_start = time.perf_counter()
    for epoch in range(start, cfg.schedule.epochs):
        rec = _epoch(setup, net, opt, sched, epoch, d, quiet, last)
        score = rec["val_qwk"] if rec["val_qwk"] is not None else -rec["train_loss"]
        if cfg.model.num_classes == 2 and rec["val_accuracy"] is not None:
            score = rec["val_accuracy"]
        torch_states = d.gather(torch.get_rng_state())
        improved = score > best
        best = max(best, score)
        if d.main:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            rngs = {"torch": torch_states[0], "torch_ranks": torch_states}
            state = checkpoint_state(setup, opt, sched, epoch, rngs, best)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", state)
            every = cfg.output.checkpoint_every
            if (epoch + 1) % every == 0 or epoch + 1 == cfg.schedule.epochs:
                save_checkpoint(last, state)
            plot_or_warn(
                log,
                plots / "curves.png",
                lambda: plot_curves(read_metrics(metrics_path), plots / "curves.png", title),
            )
        log(
            f"epoch {epoch + 1}: train loss {rec['train_loss']:.4f} acc "
            f"{rec['train_accuracy']:.3f} | val loss {fmt(rec['val_loss'])} acc "
            f"{fmt(rec['val_accuracy'])} qwk {fmt(rec['val_qwk'])} ({rec['seconds']:.1f} s)"
        )
    d.barrier()  # best.pt is written before every process evaluates it
    return finish(setup, out, metrics_path, time.perf_counter() - t_start, log, d)


def _epoch(
    setup: Setup,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    epoch: int,
    d: Dist,
    quiet: bool,
    last: Path,
) -> dict[str, Any]:
    """One epoch of training on this process's share of every batch, then validation."""
    from tqdm import tqdm

    cfg = setup.cfg
    t0 = time.perf_counter()
    setup.source.take_io_stats()  # count this epoch's training reads only (not validation's)
    seed, bs = cfg.seed, cfg.schedule.batch_size
    augment = augmenter(cfg)
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    order = keyed_rng(seed, SHUFFLE, epoch).permutation(setup.train_ids).tolist()
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    if len(batches[-1]) < d.world:
        warn(d, f"epoch {epoch + 1}: the last batch ({len(batches[-1])} slides) is dropped: "
                f"fewer slides than the {d.world} processes")  # fmt: skip
        batches = batches[:-1]
    sums = np.zeros(5)  # loss x images, correct (all iterations), seen, correct (last), images
    lrs: list[float] = []
    y_all: list[int] = []
    p_all: list[int] = []
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", file=sys.stderr,
               disable=quiet or not d.main, leave=False)  # fmt: skip
    for b_i, batch in enumerate(bar):
        mine = d.share(batch)
        labels = torch.tensor([setup.rows[i].label for i in mine])
        source: Any = setup.source
        if augment.enabled:  # one draw per image, the same transform for grid and patches
            draws = {i: augment.draw(keyed_rng(seed, AUGMENT, epoch, i)) for i in mine}
            source = AugmentedSource(source, draws)
        rngs = [keyed_rng(seed, SAMPLER, epoch, i) for i in mine]
        # DDP averages the processes' gradients: scale each by its share of the global batch
        share = len(mine) * d.world / len(batch)

        def loss_fn(lg: torch.Tensor, y: torch.Tensor, share: float = share) -> torch.Tensor:
            loss = nn.functional.cross_entropy(lg, y)
            return loss if share == 1 else loss * share

        res = setup.method.train_batch(
            setup, net, opt, sched, source, mine, labels, rngs, loss_fn, autocast
        )
        loss = res["loss"] / share
        if d.all_sum([0.0 if math.isfinite(loss) else 1.0])[0]:
            bar.close()
            raise diverged(cfg, last, f"the loss is {loss}", epoch, b_i, len(batches))
        # training accuracy of the last inner iteration (comparable with validation) and
        # the average over every inner iteration
        last_pred = res["logits"][-1].argmax(1)
        sums += [
            loss * len(mine),
            sum(int((lg.argmax(1) == labels).sum()) for lg in res["logits"]),
            len(res["logits"]) * len(mine),
            int((last_pred == labels).sum()),
            len(mine),
        ]
        lrs += res["lrs"]
        y_all += labels.tolist()
        p_all += last_pred.tolist()
        bar.set_postfix(loss=f"{sums[0] / max(sums[4], 1):.3f}")
    model = setup.model
    bad = next((n for n, t in model.state_dict().items() if not bool(t.isfinite().all())), "")
    if bad:  # the last step can blow up the weights while its loss was still finite
        raise diverged(cfg, last, f"weight {bad} is not finite", epoch, None, len(batches))
    tot_loss, correct, seen, correct_last, n_img = d.all_sum(sums.tolist())
    ys = [y for part in d.gather(y_all) for y in part]
    ps = [p for part in d.gather(p_all) for p in part]
    io = _io_stats(setup, d)  # the training epoch's reads (before validation reads more)
    val = evaluate_ids(setup, setup.val_ids, dist=d)
    lr_now = opt.param_groups[0]["lr"]
    return {
        "epoch": epoch,
        "lr": float(np.mean(lrs)) if lrs else lr_now,  # rates used
        "lr_last": lrs[-1] if lrs else lr_now,
        "optimizer_steps": len(lrs),
        "train_loss": tot_loss / max(n_img, 1),
        "train_accuracy": correct_last / max(n_img, 1),
        "train_accuracy_all_iterations": correct / max(seen, 1),
        "train_qwk": qwk(np.array(ys), np.array(ps), cfg.model.num_classes),
        "val_loss": val.get("loss"),
        "val_accuracy": val.get("accuracy"),
        "val_qwk": val.get("qwk"),
        "seconds": time.perf_counter() - t0,
        **{f"io_{k}": v for k, v in io.items()},
    }


def _io_stats(setup: Setup, d: Dist) -> dict[str, float]:
    """What the epoch's patch reads cost, summed over the processes (``io_*`` in metrics):
    patches read, shard-cache hits and misses, requests and bytes fetched from object storage."""
    stats = setup.source.take_io_stats()
    keys = sorted(stats)
    sums = d.all_sum([float(stats[k]) for k in keys])
    return {
        k: (round(v, 3) if isinstance(stats[k], float) else int(v))
        for k, v in zip(keys, sums, strict=True)
    }
