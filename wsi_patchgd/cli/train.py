"""``wsi-patchgd train | evaluate | predict``."""

from __future__ import annotations

from pathlib import Path

import click

from . import one_line_errors
from .options import parse_storage_options, storage_options_option


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the run in output.dir from last.pt.")
@click.option("--memory-budget", default=None, help="e.g. 4GB: pick k and the fill batch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def train_command(
    config: str, overrides: tuple[str, ...], resume: bool, memory_budget: str | None, quiet: bool
) -> None:
    """Train PatchGD (or the GD baseline) from CONFIG.yaml with key=value OVERRIDES."""
    from ..training.config import load_config
    from ..training.trainer import train

    ovs = list(overrides) + ([f"patchgd.memory_budget={memory_budget}"] if memory_budget else [])
    cfg = load_config(config, ovs)
    s = train(cfg, resume=resume, quiet=quiet)
    click.echo(
        f"run: {s['run']}  best epoch {s['best_epoch']}  val accuracy "
        f"{s['val_accuracy']}  val QWK {s['val_qwk']}"
    )
    click.echo(f"summary: {Path(s['run']) / 'summary.md'}")


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option("--folds", default=None, help="Comma-separated folds (default: the run's val).")
@click.option("--manifest", default=None, help="Another manifest to evaluate on.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def evaluate_command(
    checkpoint: str, folds: str | None, manifest: str | None, as_json: bool
) -> None:
    """Accuracy, QWK and confusion matrix of a checkpoint (a .pt file or a run directory)."""
    from ..training.inference import dump, evaluate_checkpoint

    ck = Path(checkpoint)
    if ck.is_dir():
        ck = ck / "checkpoints" / "best.pt"
    f = [int(x) for x in folds.split(",")] if folds else None
    res = evaluate_checkpoint(ck, f, manifest)
    if as_json:
        click.echo(dump(res))
        return
    click.echo(
        f"checkpoint {res['checkpoint']} (epoch {res['epoch']}): "
        f"accuracy {res['accuracy']:.4f}  QWK {res['qwk']:.4f}  loss {res['loss']:.4f}"
    )
    click.echo(f"confusion (rows: true): {res['confusion']}")


@click.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False))
@click.argument("stores", nargs=-1, required=True)
@click.option("--out", "out", required=True, help="predictions.csv")
@click.option("--heatmaps", default=None, help="Folder for per-slide heat map PNGs.")
@storage_options_option
@one_line_errors
def predict_command(
    checkpoint: str,
    stores: tuple[str, ...],
    out: str,
    heatmaps: str | None,
    storage_options: str | None,
) -> None:
    """Predict the class of each store with a checkpoint; write a CSV (and heat maps)."""
    from ..training.inference import predict_stores

    preds = predict_stores(
        checkpoint, list(stores), out, heatmaps, parse_storage_options(storage_options)
    )
    for p in preds:
        click.echo(f"{p['slide_id']}: class {p['pred']}  p={max(p['probs']):.3f}")
    click.echo(f"wrote {out}")
