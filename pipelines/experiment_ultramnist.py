"""PatchGD vs standard gradient descent under one memory budget, on UltraMNIST-style canvases.

The paper's central claim (Gupta et al. 2023, UltraMNIST tables): when memory is capped, GD must
shrink the image (or the batch) to fit, small digits vanish, and accuracy drops; PatchGD keeps
the full resolution because only k patches per image carry gradients at a time.

What this runs (defaults: what a 2-core CPU does in about an hour):

1. ``make_ultramnist``: 1600 train / 400 validation canvases of 256 px, 3-5 digits each,
   label = sum of the digits (28 classes), digit pools disjoint between the splits.
2. The budget: the memory one PatchGD step needs (``plan_memory``: weights + gradients + Adam
   state, Z and the head, B x k patches' activations) with the pipeline's k.
3. PatchGD (``pipelines/ultramnist-cpu.yaml``) and GD with ``patchgd.memory_budget`` set to that
   budget, same backbone (MobileNetV2, no pretrained weights), batch size, optimiser, schedule
   and seed; GD gets the largest image side whose step fits (``plan_gd_image_size``).
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
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.side, args.patch_size = 16, 8, 128, 32
        args.epochs = 1

    import torch

    from wsi_patchgd.datasets.ultramnist import make_ultramnist
    from wsi_patchgd.plots import plot_comparison, read_metrics
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "manifest.csv").exists():
        log(f"[1/4] {args.n_train} + {args.n_val} canvases of {args.side} px -> {data}")
        make_ultramnist(
            data,
            args.n_train,
            args.n_val,
            side=args.side,
            seed=args.seed,
            patch_size=args.patch_size,
            quiet=args.quiet,
            overwrite=True,
        )
    else:
        log(f"[1/4] canvases already in {data}")
    base = yaml.safe_load(Path(args.config).read_text())
    common = [
        f"data.manifest={data / 'manifest.csv'}",
        f"data.patch_size={args.patch_size}",
        f"seed={args.seed}",
        f"patchgd.gd_image_size={args.side}",
    ]
    if args.epochs:
        common.append(f"schedule.epochs={args.epochs}")
    if args.quick:
        common += ["schedule.batch_size=4", "output.heatmaps=1", "schedule.warmup_epochs=0"]
    pg_cfg = load_config(None, common + [f"output.dir={out / 'runs' / 'patchgd'}"], base=base)
    budget, plan = step_budget(pg_cfg)
    log(
        f"[2/4] memory budget = one PatchGD step at full resolution: {budget / 1e6:.0f} MB "
        f"(weights+grads+Adam {plan.fixed / 1e6:.0f} MB, Z/head {plan.latent / 1e6:.1f} MB, "
        f"{plan.per_patch_grad / 1e6:.1f} MB per patch with gradient)"
    )
    summaries: dict[str, dict[str, Any]] = {}
    for step, method in ((3, "patchgd"), (4, "gd")):
        cfg = load_config(
            None,
            common
            + [
                f"patchgd.method={method}",
                f"patchgd.memory_budget={budget // 1_000_000}MB",
                f"output.dir={out / 'runs' / method}",
            ],
            base=base,
        )
        run = out / "runs" / method
        resume = (run / "checkpoints" / "last.pt").exists()
        log(f"[{step}/4] training {method} ({'resuming' if resume else 'from scratch'}) -> {run}")
        s = train(cfg, resume=resume, quiet=args.quiet)
        summaries[method] = {**s, **final_and_best(run)}
    curves = {m: read_metrics(out / "runs" / m / "metrics.jsonl") for m in summaries}
    plot_comparison(curves, out / "comparison.png")
    pg, gd = summaries["patchgd"], summaries["gd"]
    rows = [
        (
            "PatchGD",
            f"{args.side} px (full), {args.patch_size} px patches, k={pg['k']}, ζ={pg['zeta']}",
            pg,
        ),
        ("GD", f"{gd['gd_image_size']} px (resized to fit the budget)", gd),
    ]
    lines = [
        f"UltraMNIST-style, {args.side} px canvases, 28 classes (chance {1 / 28:.3f}), "
        f"{args.n_train} train / {args.n_val} validation canvases, MobileNetV2 without "
        f"pretrained weights, batch {pg_cfg.schedule.batch_size}, {pg['epochs']} epochs, "
        f"seed {args.seed}, memory budget {budget / 1e6:.0f} MB per step.",
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
