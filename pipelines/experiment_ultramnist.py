"""PatchGD vs standard gradient descent under one memory budget, on UltraMNIST-style canvases.

The paper's central claim (Gupta et al. 2023, UltraMNIST tables): when memory is capped, GD must
shrink the image (or the batch) to fit, small digits vanish, and accuracy drops; PatchGD keeps
the full resolution because only k patches per image carry gradients at a time.

What this runs (defaults: what a 2-core CPU does in about an hour):

1. ``make_ultramnist``: 1600 train / 400 validation canvases of 256 px, 3-5 digits each,
   label = sum of the digits (28 classes; ``--label max``: the largest digit, 10 classes),
   digit pools disjoint between the splits.
2. The budget: the memory one PatchGD step needs (``plan_memory``: weights + gradients + Adam
   state, Z and the head, B x k patches' activations) with the pipeline's k.
3. PatchGD (``pipelines/ultramnist-cpu.yaml``) and GD with ``patchgd.memory_budget`` set to that
   budget, same backbone (MobileNetV2) and initial weights, batch size, optimiser, schedule and
   seed; GD gets the largest image side whose step fits (``plan_gd_image_size``). The initial
   weights (``--init digits``, the default) come from teaching MobileNetV2 single digits of the
   training pool (:func:`pretrain_on_digits`): no ImageNet weights can be downloaded here, and
   from random weights neither method learns the sum in the epochs a CPU affords.
4. ``results.json``, ``results.md`` (the table) and ``comparison.png`` in ``--out``.

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
    from wsi_patchgd.training.memory import plan_memory
    from wsi_patchgd.training.trainer import build

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
) -> dict[str, Any]:
    """Initial weights for both methods: MobileNetV2 taught to name single MNIST digits.

    ImageNet weights cannot be downloaded here, and from random weights neither method learns
    the digit sum in the epochs a CPU affords (the paper starts from pretrained backbones).
    Patches of ``patch`` px hold one digit from the *training* pool (validation digits are never
    seen) at a log-uniform side in [8, patch] px at a random position, white on black as on the
    canvases, or nothing (class 10). One pass over ``n`` such patches, batch 128, Adam with a
    one-cycle learning rate peaking at 2e-3.
    The same file initialises PatchGD and GD, so the comparison stays like for like.
    """
    import torch
    import torchvision

    from wsi_patchgd.datasets.ultramnist import load_mnist, resize_digit
    from wsi_patchgd.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    pools = load_mnist(mnist_dir, seed=mnist_seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def batch(split: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        src, idx = pools.pools[split]
        images, labels = pools.images[src], pools.labels[src]
        x = np.zeros((m, patch, patch), np.uint8)
        y = np.full(m, 10, np.int64)
        for i in range(m):
            if rng.random() < 0.1:
                continue
            j = int(rng.choice(idx))
            side = int(round(np.exp(rng.uniform(np.log(8), np.log(patch)))))
            r, c = rng.integers(0, patch - side + 1, 2)
            x[i, r : r + side, c : c + side] = resize_digit(images[j], side)
            y[i] = int(labels[j])
        t = torch.from_numpy(x).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (t - mean) / std, torch.from_numpy(y)

    model = torchvision.models.mobilenet_v2(num_classes=11)
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
        "epochs": len(recs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/experiment-ultramnist")
    ap.add_argument("--config", default=str(HERE / "ultramnist-cpu.yaml"))
    ap.add_argument("--n-train", type=int, default=1600)
    ap.add_argument("--n-val", type=int, default=400)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--seed", type=int, default=0, help="data, sampling and weights")
    ap.add_argument(
        "--init",
        choices=("digits", "scratch"),
        default="digits",
        help="initial backbone weights of both methods: taught single MNIST digits (default) "
        "or random",
    )
    ap.add_argument("--pretrain-patches", type=int, default=102400)
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also train GD at full resolution with no budget (what GD reaches when memory "
        "is not the limit)",
    )
    ap.add_argument(
        "--label",
        choices=("sum", "max"),
        default="sum",
        help="sum: the paper's digit sum (28 classes); max: the largest digit (10 classes)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every run (e.g. model.head=pooled); repeatable",
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

    import torch

    from wsi_patchgd.datasets.ultramnist import make_ultramnist
    from wsi_patchgd.plots import plot_comparison, read_metrics
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    classes = 28 if args.label == "sum" else 10
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
            seed=args.seed,
            mnist_dir=args.mnist_dir,
            patch_size=args.patch_size,
            quiet=args.quiet,
            overwrite=True,
        )
    else:
        log(f"[1] canvases already in {data}")
    base = yaml.safe_load(Path(args.config).read_text())
    pretrain: dict[str, Any] = {}
    if args.init == "digits":
        wfile = out / "pretrained-digits.pt"
        if not wfile.exists():
            log(f"[1b] initial weights: MobileNetV2 on {args.pretrain_patches} digit patches")
            pretrain = pretrain_on_digits(
                args.seed,
                wfile,
                args.patch_size,
                args.pretrain_patches,
                args.seed,
                args.quiet,
                args.mnist_dir,
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
        f"seed={args.seed}",
        f"patchgd.gd_image_size={args.side}",
    ]
    if args.epochs:
        common.append(f"schedule.epochs={args.epochs}")
    common += args.overrides
    if args.quick:
        common += ["schedule.batch_size=4", "output.heatmaps=1", "schedule.warmup_epochs=0"]
    pg_cfg = load_config(None, common + [f"output.dir={out / 'runs' / 'patchgd'}"], base=base)
    budget, plan = step_budget(pg_cfg)
    log(
        f"[2] memory budget = one PatchGD step at full resolution: {budget / 1e6:.0f} MB "
        f"(weights+grads+Adam {plan.fixed / 1e6:.0f} MB, Z/head {plan.latent / 1e6:.1f} MB, "
        f"{plan.per_patch_grad / 1e6:.1f} MB per patch with gradient)"
    )
    summaries: dict[str, dict[str, Any]] = {}
    runs = [("patchgd", "patchgd", True), ("gd", "gd", True)]
    if args.reference:
        runs.append(("gd-full", "gd", False))  # GD at full resolution, budget ignored
    for step, (name, method, budgeted) in enumerate(runs, start=3):
        run = out / "runs" / name
        cfg = load_config(
            None,
            common
            + [f"patchgd.method={method}", f"output.dir={run}"]
            + ([f"patchgd.memory_budget={budget // 1_000_000}MB"] if budgeted else []),
            base=base,
        )
        resume = (run / "checkpoints" / "last.pt").exists()
        log(f"[{step}] training {name} ({'resuming' if resume else 'new run'}) -> {run}")
        s = train(cfg, resume=resume, quiet=args.quiet)
        summaries[name] = {**s, **final_and_best(run)}
        if name == "gd-full":
            from wsi_patchgd.engine.gd import GDModel
            from wsi_patchgd.training.memory import gd_step_bytes

            m = cfg.model
            probe = GDModel(m.backbone, m.num_classes, 64, m.latent_dim, None,
                            m.head_channels, m.head_convs, 0.0)  # fmt: skip
            summaries[name]["step_bytes"] = gd_step_bytes(
                probe, args.side, cfg.schedule.batch_size, cfg.optim.name
            )
    curves = {m: read_metrics(out / "runs" / m / "metrics.jsonl") for m in summaries}
    plot_comparison(curves, out / "comparison.png", chance=1 / classes, qwk=True)
    pg, gd = summaries["patchgd"], summaries["gd"]
    rows = [
        (
            "PatchGD",
            f"{args.side} px (full), {args.patch_size} px patches, k={pg['k']}, ζ={pg['zeta']}",
            pg,
        ),
        ("GD", f"{gd['gd_image_size']} px (resized to fit the budget)", gd),
    ]
    if "gd-full" in summaries:
        ref = summaries["gd-full"]
        rows.append(
            (
                "GD, no budget (reference)",
                f"{args.side} px (full; a step needs ~{ref['step_bytes'] / 1e6:.0f} MB, over "
                "the budget)",
                ref,
            )
        )
    init = (
        f"backbones initialised from MobileNetV2 taught single training-pool digits "
        f"(held-out digit accuracy {pretrain['val_digit_accuracy']:.3f})"
        if args.init == "digits"
        else "backbones from random weights"
    )
    lines = [
        f"UltraMNIST-style, {args.side} px canvases, label = "
        f"{'sum of the digits' if args.label == 'sum' else 'largest digit'}, {classes} classes "
        f"(chance {1 / classes:.3f}), "
        f"{args.n_train} train / {args.n_val} validation canvases, MobileNetV2, "
        f"batch {pg_cfg.schedule.batch_size}, {pg['epochs']} epochs, "
        f"seed {args.seed}, memory budget {budget / 1e6:.0f} MB per step; {init}; "
        f"head: {pg_cfg.model.head}"
        + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else "")
        + ".",
        "",
        "| method | resolution trained on | val acc (best epoch) | val acc (last epoch) | "
        "val QWK (best) | train loss (last) | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res, s in rows:
        lines.append(
            f"| {name} | {res} | {s['val_accuracy']:.3f} | {s['final_val_accuracy']:.3f} | "
            f"{s['val_qwk']:.3f} | {s['final_train_loss']:.3f} | {s['seconds'] / 60:.1f} |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n\n![comparison](comparison.png)\n")
    result = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "args": vars(args),
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
        "runs": {
            m: {k: v for k, v in s.items() if k not in ("predictions", "val_confusion")}
            for m, s in summaries.items()
        },
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(table)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
