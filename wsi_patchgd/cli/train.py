"""``wsi-patchgd train | evaluate | predict``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import ConfigError
from . import one_line_errors
from .options import check_writable, parse_storage_options, storage_options_option


def _checkpoint_file(path: str) -> Path:
    """A checkpoint file, or a run directory's checkpoints/best.pt; it must exist."""
    ck = Path(path)
    if ck.is_dir():
        ck = ck / "checkpoints" / "best.pt"
    if not ck.is_file():
        raise ConfigError(
            f"{ck}: checkpoint not found; give a run's checkpoints/best.pt (or last.pt) or its "
            "run directory"
        )
    return ck


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

    ovs = list(overrides) + ([f"patchgd.memory_budget={memory_budget}"] if memory_budget else [])
    cfg = load_config(config, ovs)
    check_writable(cfg.output.dir, "output.dir", folder=True)
    if resume and not (Path(cfg.output.dir) / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{cfg.output.dir}: nothing to resume (no checkpoints/last.pt)")
    from ..data.manifest import read_manifest

    so = cfg.data.storage_options or None  # the rows now; their stores when the run starts
    read_manifest(cfg.data.manifest, cfg.model.num_classes, check_stores=False, storage_options=so)
    from ..training.trainer import train  # torch: after the quick checks

    s = train(cfg, resume=resume, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
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
    f = None
    if folds is not None:
        try:
            f = [int(x) for x in folds.split(",")]
        except ValueError:
            raise ConfigError(
                f"--folds {folds!r}: give fold numbers separated by commas, e.g. 1 or 1,2"
            ) from None
    ck = _checkpoint_file(checkpoint)
    from ..training.inference import dump, evaluate_checkpoint  # torch: after the quick checks

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
    opts = parse_storage_options(storage_options)
    check_writable(out, "--out")
    if heatmaps:
        check_writable(heatmaps, "--heatmaps", folder=True)
    ck = _checkpoint_file(checkpoint)
    from ..training.inference import predict_stores  # torch: after the quick checks

    preds = predict_stores(ck, list(stores), out, heatmaps, opts)
    for p in preds:
        click.echo(f"{p['slide_id']}: class {p['pred']}  p={max(p['probs']):.3f}")
    click.echo(f"wrote {out}")
