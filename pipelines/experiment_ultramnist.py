"""PatchGD vs standard gradient descent under one memory budget, on UltraMNIST-style canvases.

The paper's central claim (Gupta et al. 2023, UltraMNIST tables): when memory is capped, GD must
shrink the image (or the batch) to fit, small digits vanish, and accuracy drops; PatchGD keeps
the full resolution because only k patches per image carry gradients at a time.

What this runs (defaults: what a 2-core CPU does in about an hour):

1. ``make_ultramnist``: 800 train / 400 validation canvases of 256 px, 3-5 digits each of
   ``--digit-sizes`` px (default 12-24: small enough that GD's budget-forced downscale makes
   them unreadable, while most fit inside one 64 px patch), label = the largest digit
   (``--label max``, 10 classes; ``sum``: the digit sum, 28 classes; ``sum10``: the paper's
   variant, sums 0-9), digit pools disjoint between the splits. Generated once (``--data-seed``).
2. The budget: the memory one PatchGD step needs (``plan_memory``: weights + gradients + Adam
   state, Z and the head, B x k patches' activations) with the pipeline's k.
3. For each training seed (``--seeds``, default 0,1,2): PatchGD (``pipelines/ultramnist-cpu.yaml``)
   and GD with ``patchgd.memory_budget`` set to that budget (GD gets the largest image side whose
   step fits, ``plan_gd_image_size``) for the same epochs, GD under the budget again for the
   same wall-clock time as that seed's PatchGD run (more epochs), and GD at full resolution
   without the budget (the upper bound). Same backbone, initial weights, head (pooled),
   batch size, optimiser and optimizer steps per epoch, schedule, augmentation and seed. The
   initial backbone weights (``--init digits``, the default) come from teaching the backbone
   single digits of the training pool (:func:`pretrain_on_digits`): no ImageNet weights can be
   downloaded here, and from random weights neither method learns in the epochs a CPU affords.
4. ``results.json``, ``results.md`` (mean ± sd over seeds of the last-epoch and best-epoch
   validation accuracy) and ``comparison.png`` (mean ± sd curves) in ``--out``.

Usage::

    .venv/bin/python pipelines/experiment_ultramnist.py                 # the README's table
    .venv/bin/python pipelines/experiment_ultramnist.py --quick         # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[experiment] {msg}", flush=True)


def step_budget(cfg: Any) -> tuple[int, Any]:
    """Bytes one PatchGD step of ``cfg`` needs (its own k), and the plan."""
    from wsi_patchgd.training.build import build
    from wsi_patchgd.training.memory import plan_memory

    setup = build(cfg, log=lambda *a: None)
    grids = [setup.source.grid(i) for i in range(len(setup.rows))]
    cells = max(g.n_patches for g in grids)
    plan = plan_memory(
        setup.model,
        setup.source.patch_size,
        cfg.schedule.batch_size,
        cells,
        cfg.model.latent_dim,
        10**15,
        optimizer=cfg.optim.name,
    )
    need = plan.fixed + plan.latent + cfg.schedule.batch_size * setup.k * plan.per_patch_grad
    return int(math.ceil(need / 1e6) * 1e6), plan


def pretrain_on_digits(
    mnist_seed: int,
    out: Path,
    patch: int,
    n: int,
    seed: int,
    quiet: bool,
    mnist_dir: str | None = None,
    backbone: str = "mobilenet_v3_small",
    sides: tuple[int, int] = (8, 64),
) -> dict[str, Any]:
    """Initial weights for both methods: the backbone taught to name single MNIST digits.

    ImageNet weights cannot be downloaded here, and from random weights neither method learns
    the digit sum in the epochs a CPU affords (the paper starts from pretrained backbones).
    Patches of ``patch`` px hold one digit from the *training* pool (validation digits are never
    seen) at a log-uniform side in ``sides`` px at a random position, white on black as on the
    canvases, or nothing (class 10). One pass over ``n`` such patches, batch 128, Adam with a
    one-cycle learning rate peaking at 2e-3.
    The same file initialises PatchGD and GD, so the comparison stays like for like.
    """
    import torch
    import torchvision

    from wsi_patchgd.datasets.ultramnist import load_mnist, resize_digit
    from wsi_patchgd.models.inputs import InputNorm

    pools = load_mnist(mnist_dir, seed=mnist_seed)
    lo, hi = max(8, sides[0]), min(patch, sides[1])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    normalize = InputNorm()  # as the models normalise their input

    def batch(split: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        src, idx = pools.pools[split]
        images, labels = pools.images[src], pools.labels[src]
        x = np.zeros((m, patch, patch), np.uint8)
        y = np.full(m, 10, np.int64)
        for i in range(m):
            if rng.random() < 0.1:
                continue
            j = int(rng.choice(idx))
            side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
            r, c = rng.integers(0, patch - side + 1, 2)
            x[i, r : r + side, c : c + side] = resize_digit(images[j], side)
            y[i] = int(labels[j])
        return normalize(torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1)), torch.from_numpy(y)

    model = torchvision.models.get_model(backbone, num_classes=11)
    for m in model.modules():  # MobileNetV3's 0.01 leaves the statistics behind in 256 steps
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    steps = max(1, n // 128)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = batch("train", 128)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if not quiet and (step + 1) % max(1, steps // 10) == 0:
            log(f"  digits: step {step + 1}/{steps}, loss {loss.item():.3f}")
    with torch.no_grad():  # running statistics of the final weights (cumulative average)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for _ in range(8):
            model(batch("train", 128)[0])
    model.eval()
    with torch.no_grad():
        x, y = batch("val", 1000)  # held-out digits
        acc = float((model(x).argmax(1) == y).float().mean())
    torch.save(model.state_dict(), out)
    return {"patches": steps * 128, "seconds": time.perf_counter() - t0, "val_digit_accuracy": acc}


def final_and_best(run: Path) -> dict[str, Any]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {
        "final_val_accuracy": recs[-1]["val_accuracy"],
        "final_val_qwk": recs[-1]["val_qwk"],
        "max_val_accuracy": max(r["val_accuracy"] for r in recs),
        "final_train_loss": recs[-1]["train_loss"],
        "final_train_accuracy": recs[-1]["train_accuracy"],
        "epochs": len(recs),
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def plot_seeds(curves: dict[str, list[list[dict[str, Any]]]], out: Path, chance: float) -> Path:
    """Mean ± sd over seeds of validation accuracy and training loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("validation accuracy", "val_accuracy"),
              ("training accuracy (last inner iteration)", "train_accuracy"),
              ("training loss", "train_loss")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, runs in curves.items():
        n = min(len(r) for r in runs)
        ep = np.arange(1, n + 1)
        for ax, (_, key) in zip(axes, panels, strict=True):
            v = np.array([[r[e][key] for e in range(n)] for r in runs], dtype=float)
            m, sd = v.mean(0), v.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)
            ax.plot(ep, m, "-o", markersize=3, label=f"{name} (n={len(runs)})")
            ax.fill_between(ep, m - sd, m + sd, alpha=0.2)
    axes[0].axhline(chance, color="grey", ls="--", lw=1, label="chance")
    for ax, (t, _) in zip(axes, panels, strict=True):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


LABELS = {"sum": (28, "sum of the digits"), "max": (10, "largest digit"),
          "sum10": (10, "sum of the digits, sums 0-9 only (the paper's variant)")}  # fmt: skip
NAMES = {
    "patchgd": "PatchGD",
    "gd": "GD under the budget, same epochs",
    "gd-time": "GD under the budget, same wall-clock as PatchGD",
    "gd-full": "GD at full resolution, no budget (upper bound)",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/experiment-ultramnist")
    ap.add_argument("--config", default=str(HERE / "ultramnist-cpu.yaml"))
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-val", type=int, default=400)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--digit-sizes", default="12,24", help="MIN,MAX digit side in px")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (weights, sampling, order)")
    ap.add_argument("--data-seed", type=int, default=0, help="canvases and digit pretraining")
    ap.add_argument(
        "--init",
        choices=("digits", "scratch"),
        default="digits",
        help="initial backbone weights of both methods: taught single MNIST digits (default) "
        "or random",
    )
    ap.add_argument("--pretrain-patches", type=int, default=32768)
    ap.add_argument(
        "--runs",
        default="patchgd,gd,gd-time,gd-full",
        help="which of patchgd, gd (budget, same epochs), gd-time (budget, same wall-clock), "
        "gd-full (full resolution, no budget) to train",
    )
    ap.add_argument("--reference", action="store_true", help="(kept for old commands: gd-full)")
    ap.add_argument("--label", choices=tuple(LABELS), default="max")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every run (e.g. patchgd.norm=group); repeatable",
    )
    ap.add_argument(
        "--mnist-dir",
        default=None,
        help="MNIST IDX files (default: $WSI_PATCHGD_MNIST or ../shared/data/mnist)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.side, args.patch_size = 16, 8, 128, 32
        args.epochs = 1
        args.pretrain_patches = 256
        args.digit_sizes = "10,24"
        if args.seeds == "0,1,2":
            args.seeds = "0,1"
    seeds = [int(x) for x in str(args.seeds).split(",") if x != ""]
    wanted = [x for x in args.runs.split(",") if x]
    if args.reference and "gd-full" not in wanted:
        wanted.append("gd-full")
    unknown = set(wanted) - set(NAMES)
    if unknown or "patchgd" not in wanted:
        ap.error(f"--runs: {sorted(unknown)} unknown or patchgd missing; use {', '.join(NAMES)}")
    lo, hi = (int(v) for v in args.digit_sizes.split(","))

    import torch

    from wsi_patchgd.datasets.ultramnist import make_ultramnist
    from wsi_patchgd.plots import read_metrics
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    classes, label_text = LABELS[args.label]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "manifest.csv").exists():
        log(f"[1] {args.n_train} + {args.n_val} canvases of {args.side} px -> {data}")
        make_ultramnist(
            data,
            args.n_train,
            args.n_val,
            side=args.side,
            classes=classes,
            label=args.label,
            seed=args.data_seed,
            mnist_dir=args.mnist_dir,
            patch_size=args.patch_size,
            digit_sizes=(lo, hi),
            quiet=args.quiet,
            overwrite=True,
        )
    else:
        log(f"[1] canvases already in {data}")
    base = yaml.safe_load(Path(args.config).read_text())
    backbone = base.get("model", {}).get("backbone", "mobilenet_v3_small")
    pretrain: dict[str, Any] = {}
    if args.init == "digits":
        wfile = out / "pretrained-digits.pt"
        if not wfile.exists():
            log(f"[1b] initial weights: {backbone} on {args.pretrain_patches} digit patches")
            pretrain = pretrain_on_digits(
                args.data_seed,
                wfile,
                args.patch_size,
                args.pretrain_patches,
                args.data_seed,
                args.quiet,
                args.mnist_dir,
                backbone,
                (lo, hi),
            )
            (out / "pretrained-digits.json").write_text(json.dumps(pretrain, indent=2))
        else:
            pretrain = json.loads((out / "pretrained-digits.json").read_text())
        log(
            f"[1b] initial weights {wfile.name}: held-out digit accuracy "
            f"{pretrain['val_digit_accuracy']:.3f} ({pretrain['seconds']:.0f} s)"
        )
        base.setdefault("model", {})["weights"] = str(wfile)
    common = [
        f"model.num_classes={classes}",
        f"data.manifest={data / 'manifest.csv'}",
        f"data.patch_size={args.patch_size}",
        f"patchgd.gd_image_size={args.side}",
    ]
    if args.epochs:
        common.append(f"schedule.epochs={args.epochs}")
    common += args.overrides
    if args.quick:
        common += ["schedule.batch_size=4", "output.heatmaps=1", "schedule.warmup_epochs=0"]
    pg_cfg = load_config(
        None, common + [f"seed={seeds[0]}", f"output.dir={out / 'runs' / 'probe'}"], base=base
    )
    budget, plan = step_budget(pg_cfg)
    log(
        f"[2] memory budget = one PatchGD step at full resolution: {budget / 1e6:.0f} MB "
        f"(weights+grads+Adam {plan.fixed / 1e6:.0f} MB, Z/head {plan.latent / 1e6:.1f} MB, "
        f"{plan.per_patch_grad / 1e6:.1f} MB per patch with gradient)"
    )
    per_seed: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in wanted}
    curves: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in wanted}
    order = [n for n in NAMES if n in wanted]
    for seed in seeds:
        for name in order:
            method = "patchgd" if name == "patchgd" else "gd"
            run = out / "runs" / f"seed{seed}" / name
            sets = [f"seed={seed}", f"patchgd.method={method}", f"output.dir={run}"]
            if name != "gd-full":
                sets.append(f"patchgd.memory_budget={budget // 1_000_000}MB")
            if name == "gd-time":  # as many epochs as fit in this seed's PatchGD wall-clock
                pg_s = per_seed["patchgd"][seed]["seconds"]
                ref = per_seed.get("gd", {}).get(seed)
                per_epoch = ref["seconds"] / ref["epochs"] if ref else None
                epochs = pg_cfg.schedule.epochs
                if per_epoch:
                    epochs = max(epochs, int(pg_s // per_epoch))
                sets.append(f"schedule.epochs={epochs}")
            cfg = load_config(None, common + sets, base=base)
            if (run / "summary.json").exists():  # finished earlier (e.g. by another process)
                log(f"[3] seed {seed}: {name} finished already -> {run}")
                s = json.loads((run / "summary.json").read_text())
            else:
                resume = (run / "checkpoints" / "last.pt").exists()
                log(f"[3] seed {seed}: {name} ({'resuming' if resume else 'new run'}) -> {run}")
                s = train(cfg, resume=resume, quiet=args.quiet)
            s = {k: v for k, v in s.items() if k not in ("predictions", "val_confusion")}
            s.update(final_and_best(run))
            if name == "gd-full":
                from wsi_patchgd.engine import build_gd_model
                from wsi_patchgd.training.memory import gd_step_bytes

                m = cfg.model
                probe = build_gd_model(m.backbone, m.num_classes, 64, m.latent_dim, None,
                                m.head_channels, m.head_convs, 0.0)  # fmt: skip
                s["step_bytes"] = gd_step_bytes(
                    probe, args.side, cfg.schedule.batch_size, cfg.optim.name
                )
            per_seed[name][seed] = s
            curves[name].append(read_metrics(run / "metrics.jsonl"))
    plot_seeds({NAMES[n]: curves[n] for n in order}, out / "comparison.png", 1 / classes)
    pg0 = per_seed["patchgd"][seeds[0]]
    init = (
        f"backbones initialised from {backbone} taught single training-pool digits "
        f"(held-out digit accuracy {pretrain['val_digit_accuracy']:.3f})"
        if args.init == "digits"
        else "backbones from random weights"
    )
    summary: dict[str, dict[str, Any]] = {}
    lines = [
        f"UltraMNIST-style, {args.side} px canvases, digits of {lo}-{hi} px, label = "
        f"{label_text}, {classes} classes (chance {1 / classes:.3f}), "
        f"{args.n_train} train / {args.n_val} validation canvases, {backbone}, "
        f"batch {pg_cfg.schedule.batch_size}, {pg0['epochs']} epochs, seeds "
        f"{', '.join(map(str, seeds))} (mean ± sd), memory budget {budget / 1e6:.0f} MB per "
        f"step; {init}; head: {pg_cfg.model.head}; norm: {pg_cfg.patchgd.norm}"
        + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else "")
        + ".",
        "",
        "| method | resolution trained on | epochs | val acc (last epoch) | val acc (best epoch) "
        "| train acc (last epoch) | minutes per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in order:
        runs = [per_seed[name][sd] for sd in seeds]
        last = mean_sd([r["final_val_accuracy"] for r in runs])
        best = mean_sd([r["max_val_accuracy"] for r in runs])
        tr = mean_sd([r["final_train_accuracy"] for r in runs])
        minutes = mean_sd([r["seconds"] / 60 for r in runs])
        if name == "patchgd":
            res = (
                f"{args.side} px (full), {args.patch_size} px patches, k={pg0['k']}, "
                f"ζ={pg0['zeta']}"
            )
        elif name == "gd-full":
            need = runs[0]["step_bytes"] / 1e6
            res = f"{args.side} px (full; a step needs ~{need:.0f} MB)"
        else:
            res = f"{runs[0]['gd_image_size']} px (resized to fit the budget)"
        eps = sorted({r["epochs"] for r in runs})
        summary[name] = {"last": last, "best": best, "train_last": tr, "minutes": minutes,
                         "epochs": eps, "resolution": res}  # fmt: skip
        lines.append(
            f"| {NAMES[name]} | {res} | {'/'.join(map(str, eps))} | {last[0]:.3f} ± {last[1]:.3f} "
            f"| {best[0]:.3f} ± {best[1]:.3f} | {tr[0]:.3f} ± {tr[1]:.3f} | {minutes[0]:.1f} |"
        )
    total_min = (time.perf_counter() - t0) / 60
    cmd = " ".join(["python pipelines/" + Path(__file__).name,
                    *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    lines += ["", f"Command: `{cmd}`; whole experiment {total_min:.0f} min."]
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n\n![comparison](comparison.png)\n")
    result = {
        "command": cmd,
        "args": vars(args),
        "seeds": seeds,
        "budget_bytes": budget,
        "init": args.init,
        "label": args.label,
        "classes": classes,
        "pretrain": pretrain,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "runs": {name: {str(sd): r for sd, r in per_seed[name].items()} for name in order},
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(table)
    log(f"done in {total_min:.1f} min: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
