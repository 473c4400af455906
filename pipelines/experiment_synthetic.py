"""Normalisation policies of PatchGD, and GD under the same memory budget, on synthetic slides.

The setting in which PatchGD's validation accuracy used to collapse to chance while its
training accuracy was 1.0: ``make-synthetic`` slides of 2048 px whose class shows only in three
small marker regions, PatchGD on the 512 px level with 64 px patches, both methods under one
``patchgd.memory_budget``. One PatchGD run per policy (``patchgd.norm`` = batch, frozen, group)
and the GD baseline at the side the budget allows; the same seed, backbone, head, optimiser,
schedule and augmentation for all. Writes ``results.md`` / ``results.json`` and
``comparison.png`` (validation accuracy, training accuracy of the last inner iteration,
training loss per epoch) in ``--out``.

Usage::

    .venv/bin/python pipelines/experiment_synthetic.py --out out/experiment-synthetic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    print(f"[synthetic] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/experiment-synthetic")
    ap.add_argument("--slides", type=int, default=72, help="every third is validation")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--budget", default="1GB")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default="batch,frozen,group")
    ap.add_argument("--no-gd", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    from wsi_patchgd.datasets.synthetic import make_synthetic_dataset
    from wsi_patchgd.plots import plot_comparison, read_metrics
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    log(f"{args.slides} synthetic slides of {args.side} px -> {out}")
    manifest = make_synthetic_dataset(out, args.slides, args.side, seed=args.seed, patch_size=64)
    base: dict[str, Any] = {
        "data": {"manifest": str(manifest), "level": 2, "tissue_threshold": 0.25},
        "model": {"backbone": args.backbone, "num_classes": 2, "latent_dim": 128,
                  "head_channels": 128, "head_convs": 2, "dropout": 0.1},
        "patchgd": {"sampling_fraction": 0.25, "fill_batch_size": 64,
                    "memory_budget": args.budget, "gd_image_size": args.side // 4},
        "optim": {"lr": 5e-4},
        "schedule": {"epochs": args.epochs, "batch_size": 4, "warmup_epochs": 1},
        "output": {"heatmaps": 2},
        "seed": args.seed,
    }  # fmt: skip
    runs = [(f"patchgd-{p}", ["patchgd.method=patchgd", f"patchgd.norm={p}"])
            for p in args.policies.split(",")]  # fmt: skip
    if not args.no_gd:
        runs.append(("gd", ["patchgd.method=gd"]))
    summaries: dict[str, dict[str, Any]] = {}
    for name, sets in runs:
        run = out / "runs" / name
        cfg = load_config(None, [*sets, f"output.dir={run}", *args.overrides], base=base)
        resume = (run / "checkpoints" / "last.pt").exists()
        log(f"training {name} -> {run}")
        s = train(cfg, resume=resume, quiet=args.quiet)
        recs = read_metrics(run / "metrics.jsonl")
        summaries[name] = {
            **{k: v for k, v in s.items() if k not in ("predictions", "val_confusion")},
            "last_val_accuracy": recs[-1]["val_accuracy"],
            "best_val_accuracy": max(r["val_accuracy"] for r in recs),
            "last_train_accuracy": recs[-1]["train_accuracy"],
        }
    curves = {m: read_metrics(out / "runs" / m / "metrics.jsonl") for m in summaries}
    plot_comparison(curves, out / "comparison.png", chance=0.5, train_accuracy=True)
    n_val = len(summaries[runs[0][0]].get("predictions", [])) or args.slides // 3
    lines = [
        f"Synthetic slides, {args.side} px, {args.slides} slides ({n_val} validation), "
        f"{args.backbone}, memory budget {args.budget}, seed {args.seed}, {args.epochs} epochs.",
        "",
        "| run | trained on | val acc (best epoch) | val acc (last epoch) | "
        "train acc (last epoch) | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        res = (f"{s['gd_image_size']} px whole slide" if s["method"] == "gd"
               else f"512 px level, 64 px patches, k={s['k']}, ζ={s['zeta']}")  # fmt: skip
        lines.append(
            f"| {name} | {res} | {s['best_val_accuracy']:.3f} | {s['last_val_accuracy']:.3f} | "
            f"{s['last_train_accuracy']:.3f} | {s['seconds'] / 60:.1f} |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n\n![comparison](comparison.png)\n")
    cmd = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    (out / "results.json").write_text(
        json.dumps(
            {
                "command": cmd,
                "args": vars(args),
                "runs": summaries,
                "seconds": time.perf_counter() - t0,
            },
            indent=2,
            default=str,
        )  # fmt: skip
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
