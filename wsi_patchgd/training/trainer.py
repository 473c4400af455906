"""The training loop: PatchGD (or the GD baseline) over the slides of a manifest.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch: loss,
accuracy and QWK on train and validation), ``checkpoints/last.pt`` and ``best.pt`` (model,
optimizer, scheduler, epoch, sampler / shuffle / torch RNG states), ``plots/curves.png``,
``plots/heatmap-<slide>.png`` and ``summary.json`` / ``summary.md``.

``resume=True`` continues from ``last.pt`` with every RNG restored, so a killed run finishes
with the same weights and metrics as an uninterrupted one (on CPU, deterministic mode).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..augment import AugmentConfig as Augmenter
from ..augment import AugmentedSource
from ..data import StorePatchSource, read_manifest
from ..data.manifest import ManifestRow, check_manifest_stores
from ..engine.gd import GDModel, gd_predict, gd_train_batch
from ..engine.patchgd import build_patchgd_model, predict, train_batch
from ..errors import ConfigError, TrainingDivergedError
from ..models.norm import set_momentum
from ..plots import file_stem, plot_curves, plot_heatmap, read_metrics
from ..sampling import build_sampler
from ..store.slide_store import SlideStore
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, save_config
from .memory import MemoryPlan, gd_step_bytes, plan_gd_image_size, plan_memory
from .metrics import accuracy, confusion, qwk
from .schedule import build_scheduler, steps_per_epoch


@dataclass
class Setup:
    """Everything a run (or an evaluation) builds from its config."""

    cfg: RunConfig
    rows: list[ManifestRow]
    train_ids: list[int]
    val_ids: list[int]
    source: StorePatchSource
    model: nn.Module
    device: torch.device
    k: int
    zeta: int
    epsilon: int
    fill_batch_size: int
    memory: MemoryPlan | None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def gd_levels(urls: Sequence[str], size: int, storage_options: Any = None) -> list[int]:
    """Per store, the coarsest level whose shorter side is still >= ``size`` (else level 0)."""
    out = []
    for u in urls:
        s = SlideStore(u, storage_options)
        lv = 0
        for i in range(s.n_levels):
            if min(s.level_shape(i)) >= size:
                lv = i
        out.append(lv)
    return out


def _gd_side_for_budget(cfg: RunConfig, urls: Sequence[str], so: Any, log: Any) -> int:
    """GD under ``patchgd.memory_budget``: the largest image side whose step fits it."""
    m, p = cfg.model, cfg.patchgd
    assert p.memory_budget is not None
    largest = max(max(SlideStore(u, so).level_shape(0)) for u in urls)
    probe = GDModel(
        m.backbone, m.num_classes, 64, m.latent_dim, None, m.head_channels, m.head_convs, 0.0
    )
    side = plan_gd_image_size(
        probe,
        cfg.schedule.batch_size,
        p.memory_budget,
        min(p.gd_image_size, largest),
        optimizer=cfg.optim.name,
    )
    need = gd_step_bytes(probe, side, cfg.schedule.batch_size, cfg.optim.name)
    log(
        f"memory budget {p.memory_budget}: GD image size {side}px (asked {p.gd_image_size}px, "
        f"images up to {largest}px; a step needs ~{need / 1e6:.0f} MB)"
    )
    return side


def build(
    cfg: RunConfig,
    *,
    check_stores: bool = True,
    log: Any = print,
    manifest_rows: Sequence[ManifestRow] | None = None,
) -> Setup:
    """Manifest, patch source, model and PatchGD settings of a config.

    ``manifest_rows`` (e.g. the stores given to ``predict``, built in memory) are used instead
    of reading ``data.manifest``.
    """
    so = cfg.data.storage_options or None
    if manifest_rows is None:
        rows = read_manifest(
            cfg.data.manifest, cfg.model.num_classes, check_stores=check_stores, storage_options=so
        )
    else:
        rows = list(manifest_rows)
        if check_stores:
            check_manifest_stores(rows, "stores", so)
    train_ids = [i for i, r in enumerate(rows) if r.fold in cfg.data.train_folds]
    val_ids = [i for i, r in enumerate(rows) if r.fold in cfg.data.val_folds]
    if not train_ids:
        raise ConfigError(f"{cfg.data.manifest}: no slide in train_folds {cfg.data.train_folds}")
    urls = [r.store for r in rows]
    device = pick_device(cfg.device)
    setup = _build(cfg, rows, train_ids, val_ids, urls, so, device, log)
    if cfg.model.norm_momentum is not None:
        set_momentum(setup.model, cfg.model.norm_momentum)
    return setup


def _build(
    cfg: RunConfig,
    rows: list[ManifestRow],
    train_ids: list[int],
    val_ids: list[int],
    urls: list[str],
    so: Any,
    device: torch.device,
    log: Any,
) -> Setup:
    m, p = cfg.model, cfg.patchgd
    if p.method == "gd":
        if p.memory_budget:
            side = _gd_side_for_budget(cfg, urls, so, log)
            p = replace(p, gd_image_size=side)
            cfg = replace(cfg, patchgd=p)
        levels = gd_levels(urls, p.gd_image_size, so)
        source = StorePatchSource(urls, levels, cfg.data.patch_size, 0.0, so)
        model: nn.Module = GDModel(
            m.backbone,
            m.num_classes,
            p.gd_image_size,
            m.latent_dim,
            m.weights,
            m.head_channels,
            m.head_convs,
            m.dropout,
            norm=p.norm,
        )
        return Setup(
            cfg,
            rows,
            train_ids,
            val_ids,
            source,
            model.to(device),
            device,
            0,
            1,
            1,
            p.fill_batch_size,
            None,
        )
    source = StorePatchSource(
        urls, cfg.data.level, cfg.data.patch_size, cfg.data.tissue_threshold, so
    )
    grids = [source.grid(i) for i in range(len(urls))]
    grid = None
    if m.head == "paper":
        shapes = {g.shape for g in grids}
        if len(shapes) != 1:
            raise ConfigError(
                f"model.head=paper needs one grid size for all slides, got {shapes};"
                " use model.head=pooled"
            )
        grid = shapes.pop()
    model = build_patchgd_model(
        m.backbone,
        m.num_classes,
        m.head,
        m.latent_dim,
        grid,
        m.weights,
        m.checkpointing,
        m.background,
        p.norm,
        m.head_channels,
        m.head_convs,
        m.dropout,
    )
    n_max = max(g.n_tissue for g in (grids[i] for i in train_ids))
    if p.k is not None:
        k = p.k
    else:
        assert p.sampling_fraction is not None
        k = max(1, math.ceil(p.sampling_fraction * n_max))
    zeta = p.inner_iterations or max(1, math.ceil(n_max / k))
    fill_bs = p.fill_batch_size
    plan = None
    if p.memory_budget:
        cells = max(g.n_patches for g in grids)
        plan = plan_memory(
            model,
            source.patch_size,
            cfg.schedule.batch_size,
            cells,
            m.latent_dim,
            p.memory_budget,
            optimizer=cfg.optim.name,
        )
        if k > plan.k:
            log(f"memory budget {p.memory_budget}: k {k} -> {plan.k}")
            k = plan.k
            if p.inner_iterations is None:
                zeta = max(1, math.ceil(n_max / k))
        fill_bs = min(fill_bs, plan.fill_batch_size)
        log(f"memory budget {p.memory_budget}: k={k}, fill batch={fill_bs} ({plan.describe()})")
    epsilon = p.epsilon or zeta
    return Setup(
        cfg,
        rows,
        train_ids,
        val_ids,
        source,
        model.to(device),
        device,
        k,
        zeta,
        epsilon,
        fill_bs,
        plan,
    )


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, o.lr, weight_decay=o.weight_decay)


def _scheduler(setup: Setup, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-optimizer-step schedule of a run (:mod:`.schedule`)."""
    s = setup.cfg.schedule
    gd = setup.cfg.patchgd.method == "gd"
    per_epoch = steps_per_epoch(
        len(setup.train_ids), s.batch_size, 1 if gd else setup.zeta, 1 if gd else setup.epsilon
    )
    return build_scheduler(
        opt, per_epoch, s.epochs, s.scheduler, s.warmup_epochs, s.warmup_steps, s.decay_factor
    )


def augmenter(cfg: RunConfig) -> Augmenter:
    """The run's augmentation settings (the same for PatchGD and the GD baseline)."""
    a = cfg.augment
    return Augmenter(flips=a.flips, rot90=a.rot90, hed_sigma=a.hed_sigma)


def evaluate_ids(
    setup: Setup, ids: Sequence[int], model: nn.Module | None = None
) -> dict[str, Any]:
    """Loss, accuracy, QWK and per-slide predictions on the given images."""
    model = model or setup.model
    cfg = setup.cfg
    if not ids:
        return {}
    logits_all = []
    bs = cfg.schedule.batch_size
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    for i in range(0, len(ids), bs):
        chunk = list(ids[i : i + bs])
        if cfg.patchgd.method == "gd":
            logits_all.append(gd_predict(model, setup.source, chunk, bs, autocast).float().cpu())
        else:
            logits_all.append(
                predict(model, setup.source, chunk, setup.fill_batch_size, autocast).float().cpu()
            )
    logits = torch.cat(logits_all)
    y = torch.tensor([setup.rows[i].label for i in ids])
    pred = logits.argmax(1)
    n_cls = cfg.model.num_classes
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": accuracy(y.numpy(), pred.numpy()),
        "qwk": qwk(y.numpy(), pred.numpy(), n_cls),
        "confusion": confusion(y.numpy(), pred.numpy(), n_cls),
        "predictions": [
            {
                "slide_id": setup.rows[i].slide_id,
                "label": setup.rows[i].label,
                "pred": int(p),
                "probs": [round(float(v), 5) for v in pr],
            }
            for i, p, pr in zip(ids, pred, logits.softmax(1), strict=True)
        ],
    }


def latent_heatmap(setup: Setup, image: int, model: nn.Module | None = None) -> np.ndarray:
    """Per-patch contribution to the predicted class: sum over D of Z * dlogit/dZ (grad x input).

    Background and padding cells are nan.
    """
    net = model or setup.model
    net.eval()
    latent, _ = net.fill(setup.source, [image], setup.fill_batch_size)  # type: ignore[operator]
    z = latent.z.detach().requires_grad_(True)
    logits = net.head(z, latent.valid)  # type: ignore[operator]
    logits[0, int(logits.argmax(1)[0])].backward()
    assert z.grad is not None
    heat = (z.grad * z).sum(1)[0].detach().cpu().numpy().astype(np.float64)
    grid = latent.grids[0]
    heat = heat[: grid.n_h, : grid.n_w]
    heat[~np.asarray(grid.tissue)] = np.nan
    return heat


def write_heatmap(setup: Setup, image: int, out: Path, model: nn.Module | None = None) -> Path:
    heat = latent_heatmap(setup, image, model)
    store = setup.source.store(image)
    lvl = next(
        (i for i in range(store.n_levels) if max(store.level_shape(i)) <= 1024), store.n_levels - 1
    )
    h, w = store.level_shape(lvl)
    thumb = store.read_region(lvl, 0, 0, w, h).transpose(1, 2, 0)
    level = setup.source.levels[image]
    lh, lw = store.level_shape(level)
    p = setup.source.patch_size
    ext = (heat.shape[0] * p / lh, heat.shape[1] * p / lw)
    row = setup.rows[image]
    return plot_heatmap(thumb, heat, out, f"{row.slide_id} (label {row.label})", ext)


def _state(
    setup: Setup, opt: Any, sched: Any, epoch: int, rngs: dict[str, Any], best: float
) -> dict[str, Any]:
    return {
        "model": setup.model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "rng": rngs,
        "best": best,
        "config": setup.cfg.to_saved_dict(),  # credentials redacted
        "k": setup.k,
        "zeta": setup.zeta,
        "epsilon": setup.epsilon,
    }


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
    opt = _optimizer(cfg, model)
    sched = _scheduler(setup, opt)
    shuffle_rng = np.random.default_rng(cfg.seed)
    sampler_rng = np.random.default_rng(cfg.seed + 1)
    augment_rng = np.random.default_rng(cfg.seed + 2)
    augment = augmenter(cfg)
    sampler = build_sampler(cfg.patchgd.sampler)
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
    method = cfg.patchgd.method
    log(
        f"{method}: {len(setup.train_ids)} train / {len(setup.val_ids)} val slides, "
        + (
            f"k={setup.k}, zeta={setup.zeta}, epsilon={setup.epsilon}"
            if method == "patchgd"
            else f"image {setup.cfg.patchgd.gd_image_size}px"
        )
    )
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
            if method == "gd":
                res: Any = gd_train_batch(
                    model, opt, source, batch, labels, loss_fn, autocast_dtype=autocast,
                    scheduler=sched,
                )  # fmt: skip
            else:
                res = train_batch(
                    model,
                    opt,
                    source,
                    batch,
                    labels,
                    sampler,
                    setup.k,
                    setup.zeta,
                    setup.epsilon,
                    sampler_rng,
                    loss_fn,
                    setup.fill_batch_size,
                    autocast,
                    sched,
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
                raise _diverged(cfg, last, f"the loss is {res['loss']}", epoch, b_i, len(batches))
            tot_loss += res["loss"] * len(batch)
            n_img += len(batch)
            bar.set_postfix(loss=f"{tot_loss / n_img:.3f}")
        bad = next((n for n, t in model.state_dict().items() if not bool(t.isfinite().all())), "")
        if bad:  # the last step can blow up the weights while its loss was still finite
            raise _diverged(cfg, last, f"weight {bad} is not finite", epoch, None, len(batches))
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
            save_checkpoint(ckpt_dir / "best.pt", _state(setup, opt, sched, epoch, rngs, best))
        if (epoch + 1) % cfg.output.checkpoint_every == 0 or epoch + 1 == cfg.schedule.epochs:
            save_checkpoint(last, _state(setup, opt, sched, epoch, rngs, best))
        _plot_or_warn(
            log,
            plots / "curves.png",
            lambda: plot_curves(
                read_metrics(metrics_path), plots / "curves.png", f"{method} {out.name}"
            ),
        )
        log(
            f"epoch {epoch + 1}: train loss {rec['train_loss']:.4f} acc "
            f"{rec['train_accuracy']:.3f} | val loss {_f(rec['val_loss'])} acc "
            f"{_f(rec['val_accuracy'])} qwk {_f(rec['val_qwk'])} ({rec['seconds']:.1f} s)"
        )
    return _finish(setup, out, metrics_path, time.perf_counter() - t_start, log)


#: config keys a resumed run may change: resources, output, reporting (not the run itself)
_RESUME_FREE = ("data.storage_options", "patchgd.fill_batch_size", "patchgd.memory_budget",
                "output.", "device", "deterministic", "precision")  # fmt: skip


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "storage_options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(setup: Setup, state: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``state`` (a ``last.pt``) with a config that changes the run.

    Compares the checkpoint's config with the new one on every key that defines the model, the
    data, the PatchGD settings, the optimizer, the schedule and augmentation;
    ``schedule.epochs`` may grow. Raises ConfigError naming the differing keys.
    """
    saved = state.get("config")
    if not isinstance(saved, dict):
        cfg_yaml = path.parent.parent / "config.yaml"
        import yaml

        saved = yaml.safe_load(cfg_yaml.read_text()) if cfg_yaml.is_file() else None
    if not isinstance(saved, dict):
        return  # nothing recorded to compare with (the state dicts are still checked)
    old, new = _flat(saved), _flat(setup.cfg.to_dict())
    diffs = []
    for key, v in new.items():
        if key not in old or key.startswith(_RESUME_FREE) or old[key] == v:
            continue
        if key == "schedule.epochs" and isinstance(old[key], int) and v >= old[key]:
            continue
        diffs.append(f"{key} {old[key]!r} -> {v!r}")
    if setup.cfg.patchgd.method == "patchgd":
        for key in ("k", "zeta", "epsilon"):
            was = state.get(key)
            if (
                was is not None
                and was != getattr(setup, key)
                and not any(d.startswith(f"patchgd.{key} ") for d in diffs)
            ):
                diffs.append(f"patchgd.{key} (in effect) {was} -> {getattr(setup, key)}")
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"{path}: cannot resume with a changed config ({shown}); resume with the run's "
            f"settings ({path.parent.parent / 'config.yaml'}; schedule.epochs may grow) or "
            "train into a new output.dir"
        )


def _diverged(
    cfg: RunConfig, last: Path, what: str, epoch: int, batch: int | None, n_batches: int
) -> TrainingDivergedError:
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}/{n_batches}" if batch is not None else "")
    again = ""
    if last.exists():
        again = f" into a new output.dir ({last.parent.parent} keeps its checkpoints)"
    return TrainingDivergedError(
        f"training diverged: {what} at {where}; nothing of epoch {epoch + 1} was saved; train "
        f"again{again} with a lower optim.lr (now {cfg.optim.lr:g}) or a longer warm-up "
        "(schedule.warmup_epochs)"
    )


def load_error(exc: BaseException) -> str:
    """The telling line of a ``load_state_dict`` error (its first line only says that it failed),
    at most 200 characters."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _plot_or_warn(log: Any, path: Path, make: Any) -> None:
    """Draw a plot; a failure is a warning line, never the loss of a finished run."""
    try:
        make()
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        log(f"warning: {path}: plot not written ({type(exc).__name__}: {why}); the run goes on")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _finish(setup: Setup, out: Path, metrics_path: Path, seconds: float, log: Any) -> dict:
    cfg = setup.cfg
    records = read_metrics(metrics_path)
    best_path = out / "checkpoints" / "best.pt"
    best_state = load_checkpoint(best_path) if best_path.exists() else None
    val = {}
    if best_state is not None and setup.val_ids:
        model = setup.model
        model.load_state_dict(best_state["model"])
        val = evaluate_ids(setup, setup.val_ids, model)
        if cfg.patchgd.method == "patchgd" and cfg.output.heatmaps:
            for i in setup.val_ids[: cfg.output.heatmaps]:
                png = out / "plots" / f"heatmap-{file_stem(setup.rows[i].slide_id)}.png"
                _plot_or_warn(log, png, lambda i=i, png=png: write_heatmap(setup, i, png, model))
    summary = {
        "run": str(out),
        "method": cfg.patchgd.method,
        "backbone": cfg.model.backbone,
        "epochs": len(records),
        "best_epoch": best_state["epoch"] if best_state else None,
        "k": setup.k, "zeta": setup.zeta, "epsilon": setup.epsilon,
        "gd_image_size": setup.cfg.patchgd.gd_image_size if cfg.patchgd.method == "gd" else None,
        "val_accuracy": val.get("accuracy"),
        "val_qwk": val.get("qwk"),
        "val_loss": val.get("loss"),
        "val_confusion": val.get("confusion"),
        "final_train_loss": records[-1]["train_loss"] if records else None,
        "seconds": seconds,
        "memory_plan": setup.memory.describe() if setup.memory else None,
        "predictions": val.get("predictions", []),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# {out.name}: {cfg.patchgd.method} / {cfg.model.backbone}",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val QWK |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['epoch'] + 1} | {r['train_loss']:.4f} | {r['train_accuracy']:.3f} | "
            f"{_f(r['val_loss'])} | {_f(r['val_accuracy'])} | {_f(r['val_qwk'])} |"
        )
    lines += [
        "",
        f"Best epoch: {summary['best_epoch']}; validation accuracy "
        f"{_f(summary['val_accuracy'])}, QWK {_f(summary['val_qwk'])}.",
        "",
        "![curves](plots/curves.png)",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    log(f"run written to {out} (summary.md, metrics.jsonl, plots/, checkpoints/)")
    return summary
