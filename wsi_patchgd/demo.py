"""``wsi-patchgd demo``: the main job, end to end, on a machine with no data and no internet.

1. generate a labelled set of synthetic pyramidal slides (H&E-like texture on glass; the class
   shows only in a few small marker regions, visible at full resolution, lost in a thumbnail);
2. convert them into stores with Dask;
3. train PatchGD on a high-resolution level and the standard-GD baseline on the whole slide
   downscaled to the largest side whose training step fits the same memory budget (chosen by
   the planner, at most the side PatchGD sees), same backbone;
4. evaluate both and write a report (budget, GD's side, best- and last-epoch accuracy, learning
   curves, heat maps) whose path is printed.

Re-running reuses what is complete (slides, stores, finished runs of the same settings).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .datasets.synthetic import make_synthetic_dataset
from .errors import ConfigError

#: The pyramid level PatchGD trains on (each level halves the side).
LEVEL = 2


def _log(quiet: bool, msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _resumable(run_dir: Path, cfg: Any) -> bool:
    """Whether ``run_dir`` holds a run to resume; one made with other settings is an error."""
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return False
    saved = run_dir / "config.yaml"
    wanted = yaml.safe_load(yaml.safe_dump(cfg.to_saved_dict(), sort_keys=False))
    if not saved.is_file() or yaml.safe_load(saved.read_text()) != wanted:
        raise ConfigError(
            f"{run_dir}: holds a run made with other settings (budget, epochs, backbone, ...); "
            "remove it or use another --out"
        )
    return True


def run_demo(
    out: str | Path = "out/demo",
    *,
    n_slides: int = 72,
    side: int = 2048,
    epochs: int = 6,
    budget: str = "1GB",
    backbone: str = "resnet18",
    seed: int = 0,
    workers: int | None = None,
    quiet: bool = False,
) -> Path:
    """Run the demo; returns the report's path (``<out>/report.md``).

    Both methods get the memory budget ``budget`` (``patchgd.memory_budget``): PatchGD's k and
    fill batch are planned to fit it, and GD gets the largest image side whose step fits it,
    capped at the side of the level PatchGD trains on (``side // 4``).

    Raises:
        ConfigError: bad sizes or budget, a budget too small for either method, a run of other
            settings in ``out``.
    """
    from .training.config import load_config

    out = Path(out)
    level_side = side >> LEVEL
    t0 = time.perf_counter()
    manifest = out / "manifest.csv"  # what make_synthetic_dataset writes
    base: dict[str, Any] = {
        "data": {
            "manifest": str(manifest),
            "level": LEVEL,
            "train_folds": [0],
            "val_folds": [1],
            "tissue_threshold": 0.25,
        },
        "model": {
            "backbone": backbone,
            "num_classes": 2,
            "latent_dim": 128,
            "head_channels": 128,
            "head_convs": 2,
            "dropout": 0.1,
        },
        "patchgd": {
            "sampling_fraction": 0.25,
            "fill_batch_size": 64,
            "memory_budget": budget,
            # GD's side is planned for the budget; it may at most see what PatchGD sees
            "gd_image_size": level_side,
        },
        "optim": {"lr": 5e-4},
        "schedule": {"epochs": epochs, "batch_size": 4, "warmup_epochs": 1},
        "output": {"heatmaps": 4},
        "seed": seed,
    }
    for method in ("patchgd", "gd"):  # every setting is checked before any slide is made
        load_config(None, [f"patchgd.method={method}", f"output.dir={out}"], base=base)
    from .models.backbones import check_backbone_name  # torch: after the quick checks
    from .training.trainer import train

    check_backbone_name(backbone)
    _log(quiet, f"[1/5] generating {n_slides} synthetic slides ({side} x {side} px) in {out}")
    make_synthetic_dataset(
        out, n_slides, side, seed=seed, convert=False, log=lambda m: _log(quiet, m)
    )
    _log(quiet, f"[2/5] converting them into stores with Dask: {out / 'stores'}")
    manifest = make_synthetic_dataset(
        out, n_slides, side, seed=seed, patch_size=64, workers=workers
    )
    base["data"]["manifest"] = str(manifest)
    summaries = {}
    for step, method in ((3, "patchgd"), (4, "gd")):
        run_dir = out / "runs" / method
        what = (
            f"PatchGD on level {LEVEL} ({level_side} px, 64 px patches)"
            if method == "patchgd"
            else f"standard GD on the whole slide resized to fit the budget (<= {level_side} px)"
        )
        _log(
            quiet,
            f"[{step}/5] training {what}, {backbone}, {epochs} epochs, memory budget {budget}"
            f" -> {run_dir}",
        )
        cfg = load_config(None, [f"patchgd.method={method}", f"output.dir={run_dir}"], base=base)
        summaries[method] = train(cfg, resume=_resumable(run_dir, cfg), quiet=quiet)
    _log(quiet, "[5/5] writing the report")
    report = write_report(out, summaries, time.perf_counter() - t0, budget=budget, side=side)
    _log(quiet, f"demo finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report


def _epoch_stats(records: list[dict[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    """Best- and last-epoch validation accuracy and the last epoch's training accuracy, from a
    run's ``metrics.jsonl`` records (epochs counted from 0, as there)."""
    last = records[-1] if records else {}
    best = next((r for r in records if r["epoch"] == best_epoch), {})
    return {
        "best_epoch": best_epoch,
        "last_epoch": last.get("epoch"),
        "val_accuracy_best": best.get("val_accuracy"),
        "val_accuracy_last": last.get("val_accuracy"),
        "train_accuracy_last": last.get("train_accuracy"),
    }


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ep(v: int | None) -> str:
    return "-" if v is None else str(v + 1)


def write_report(
    out: Path,
    summaries: dict[str, dict[str, Any]],
    seconds: float,
    *,
    budget: str,
    side: int = 2048,
) -> Path:
    """Markdown report (``report.md``) with a comparison plot, and ``report.json``; returns the
    report's path."""
    from .plots import plot_comparison, read_metrics

    curves = {m: read_metrics(out / "runs" / m / "metrics.jsonl") for m in summaries}
    plot_comparison(curves, out / "comparison.png", chance=0.5, train_accuracy=True)
    stats = {m: _epoch_stats(curves[m], s.get("best_epoch")) for m, s in summaries.items()}
    level_side = side >> LEVEL
    pg, gd = summaries.get("patchgd", {}), summaries.get("gd", {})
    gd_side = gd.get("gd_image_size")
    n_val = len(pg.get("predictions") or gd.get("predictions") or [])
    lines = [
        "# wsi_patchgd demo",
        "",
        f"Synthetic {side} px slides whose class shows only in three small marker regions. "
        f"Both methods get the same memory budget, **{budget}**, and the same backbone "
        f"({pg.get('backbone') or gd.get('backbone')}) and head width. PatchGD trains on "
        f"level {LEVEL} ({level_side} px, {side // level_side}x downsampled) with 64 px "
        f"patches, **k = {pg.get('k')}, ζ = {pg.get('zeta')}** (k planned to fit the budget). "
        f"Standard gradient descent (GD) trains on the whole slide resized to "
        f"**{gd_side} px**: the largest side whose training step fits the budget "
        f"(`plan_gd_image_size`), at most the {level_side} px PatchGD sees. "
        f"Chance is 50 %"
        + (
            f"; {n_val} validation slides, one error moves accuracy by {1 / n_val:.3f}."
            if n_val
            else "."
        ),
        "",
        "| method | trained on | val acc (best epoch) | best epoch | val acc (last epoch) | "
        "train acc (last epoch) | val QWK (best) | k | ζ | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summaries.items():
        st = stats[m]
        if m == "patchgd":
            on, k, zeta = f"{level_side} px, 64 px patches", s["k"], s["zeta"]
        else:
            on, k, zeta = f"{s.get('gd_image_size')} px (fits {budget})", "-", "-"
        lines.append(
            f"| {m} | {on} | {_f(st['val_accuracy_best'])} | {_ep(st['best_epoch'])} | "
            f"{_f(st['val_accuracy_last'])} (epoch {_ep(st['last_epoch'])}) | "
            f"{_f(st['train_accuracy_last'])} | {_f(s.get('val_qwk'))} | {k} | {zeta} | "
            f"{s['seconds']:.0f} |"
        )
    lines += [
        "",
        "Epochs are counted from 1; the best epoch is the one with the highest validation "
        "accuracy (its checkpoint gives the QWK); training accuracy is that of the last inner "
        "iteration.",
        "",
        f"Memory budget {budget}: PatchGD {pg.get('memory_plan') or '-'}; GD {gd_side} px "
        f"(asked at most {level_side} px).",
        "",
        f"Total demo time: {seconds:.0f} s.",
        "",
        "![comparison](comparison.png)",
        "",
        "## Learning curves",
        "",
    ]
    for m in summaries:
        lines.append(f"![{m}](runs/{m}/plots/curves.png)")
    lines += ["", "## PatchGD heat maps (validation slides)", ""]
    for png in sorted((out / "runs" / "patchgd" / "plots").glob("heatmap-*.png")):
        lines.append(f"![{png.stem}](runs/patchgd/plots/{png.name})")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    data: dict[str, Any] = {
        "memory_budget": budget,
        "gd_image_size": gd_side,
        "gd_max_image_size": level_side,
        "slide_side": side,
        "seconds": seconds,
    }
    for m, s in summaries.items():
        data[m] = {k: v for k, v in s.items() if k != "predictions"} | stats[m]
    (out / "report.json").write_text(json.dumps(data, indent=2))
    return report
