"""What a finished run reports: ``summary.json`` / ``summary.md``, heat maps, plot failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TrainingDivergedError
from ..plots import file_stem, read_metrics
from .checkpoint import load_checkpoint
from .config import RunConfig
from .distributed import Dist
from .evaluate import evaluate_ids, write_heatmap
from .setup import Log, Setup


def plot_or_warn(log: Log, path: Path, make: Any) -> None:
    """Draw a plot (``make()``); a failure is a warning line, never the loss of a finished run."""
    try:
        make()
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        log(f"warning: {path}: plot not written ({type(exc).__name__}: {why}); the run goes on")


def fmt(v: float | None) -> str:
    """A metric with three decimals, ``-`` when there is none."""
    return "-" if v is None else f"{v:.3f}"


def diverged(
    cfg: RunConfig, last: Path, what: str, epoch: int, batch: int | None, n_batches: int
) -> TrainingDivergedError:
    """The error of a run whose loss or weights stopped being finite, saying what to change."""
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}/{n_batches}" if batch is not None else "")
    again = ""
    if last.exists():
        again = f" into a new output.dir ({last.parent.parent} keeps its checkpoints)"
    return TrainingDivergedError(
        f"training diverged: {what} at {where}; nothing of epoch {epoch + 1} was saved; train "
        f"again{again} with a lower optim.lr (now {cfg.optim.lr:g}) or a longer warm-up "
        "(schedule.warmup_epochs)"
    )


def finish(
    setup: Setup, out: Path, metrics_path: Path, seconds: float, log: Log, dist: Dist | None = None
) -> dict:
    """Evaluate the best checkpoint, draw its heat maps, write the summary; returns it.

    Under torchrun every process evaluates its share; rank 0 alone draws and writes.
    """
    d = dist or Dist()
    cfg = setup.cfg
    records = read_metrics(metrics_path)
    best_path = out / "checkpoints" / "best.pt"
    best_state = load_checkpoint(best_path) if best_path.exists() else None
    val = {}
    if best_state is not None and setup.val_ids:
        model = setup.model
        model.load_state_dict(best_state["model"])
        val = evaluate_ids(setup, setup.val_ids, model, d)
        if d.main and setup.method.has_heatmaps and cfg.output.heatmaps:
            for i in setup.val_ids[: cfg.output.heatmaps]:
                png = out / "plots" / f"heatmap-{file_stem(setup.rows[i].slide_id)}.png"
                plot_or_warn(log, png, lambda i=i, png=png: write_heatmap(setup, i, png, model))
    summary = {
        "run": str(out),
        "method": setup.method.name,
        "backbone": cfg.model.backbone,
        "epochs": len(records),
        "best_epoch": best_state["epoch"] if best_state else None,
        **setup.method.summary(setup),
        "val_accuracy": val.get("accuracy"),
        "val_qwk": val.get("qwk"),
        "val_loss": val.get("loss"),
        "val_confusion": val.get("confusion"),
        "final_train_loss": records[-1]["train_loss"] if records else None,
        "seconds": seconds,
        "memory_plan": setup.memory.describe() if setup.memory else None,
        "predictions": val.get("predictions", []),
    }
    if not d.main:
        return summary
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# {out.name}: {setup.method.name} / {cfg.model.backbone}",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val QWK |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['epoch'] + 1} | {r['train_loss']:.4f} | {r['train_accuracy']:.3f} | "
            f"{fmt(r['val_loss'])} | {fmt(r['val_accuracy'])} | {fmt(r['val_qwk'])} |"
        )
    lines += [
        "",
        f"Best epoch: {summary['best_epoch']}; validation accuracy "
        f"{fmt(summary['val_accuracy'])}, QWK {fmt(summary['val_qwk'])}.",
        "",
        "![curves](plots/curves.png)",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    log(f"run written to {out} (summary.md, metrics.jsonl, plots/, checkpoints/)")
    return summary
