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
@click.option(
    "--bootstrap",
    "resamples",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bootstrap resamples of the 95 % intervals (0: none).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the resamples.")
@click.option(
    "--by",
    default="provider",
    show_default=True,
    help="Manifest column to break the metrics down by (PANDA's data_provider counts as "
    "provider); skipped when the manifest lacks it.",
)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def evaluate_command(
    checkpoint: str,
    folds: str | None,
    manifest: str | None,
    resamples: int,
    seed: int,
    by: str,
    as_json: bool,
) -> None:
    """Accuracy, QWK (with bootstrap 95 % intervals), per-provider rows and confusion matrix of a
    checkpoint (a .pt file or a run directory)."""
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

    res = evaluate_checkpoint(ck, f, manifest, resamples=resamples, seed=seed, by=by or None)
    if as_json:
        click.echo(dump(res))
        return
    click.echo(
        f"checkpoint {res['checkpoint']} (epoch {res['epoch']}), {res['n']} slides: "
        f"accuracy {_with_ci(res, 'accuracy')}  QWK {_with_ci(res, 'qwk')}  "
        f"loss {res['loss']:.4f}"
    )
    if "accuracy_ci" in res:
        click.echo(f"(95 % intervals: percentile bootstrap, {resamples} resamples, seed {seed})")
    groups = res.get("groups")
    if groups:
        for r in groups["rows"]:
            click.echo(
                f"  {groups['column']} {r['group'] or '(empty)'}: {r['n']} slides, accuracy "
                f"{_with_ci(r, 'accuracy')}  QWK {_with_ci(r, 'qwk')}"
            )
    click.echo(f"confusion (rows: true): {res['confusion']}")


def _with_ci(res: dict, key: str) -> str:
    ci = res.get(f"{key}_ci")
    if not ci:
        return f"{res[key]:.4f}"
    return f"{res[key]:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


@click.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False))
@click.argument("stores", nargs=-1, required=True)
@click.option("--out", "out", required=True, help="predictions.csv")
@click.option(
    "--heatmaps",
    default=None,
    help="Folder for per-slide heat map PNGs and QuPath GeoJSON; also writes the layer "
    "heatmaps/patchgd (and labels/patchgd) into each store.",
)
@click.option(
    "--store-layer/--no-store-layer",
    default=True,
    show_default=True,
    help="With --heatmaps: write the heat map into each store as an OME-Zarr layer.",
)
@click.option(
    "--ordinal/--no-ordinal",
    default=None,
    help="Classes are ordered grades (PANDA ISUP 0-5): add expected_grade = sum_k k*p_k. "
    "Default: what the checkpoint's config says, else no.",
)
@storage_options_option
@one_line_errors
def predict_command(
    checkpoint: str,
    stores: tuple[str, ...],
    out: str,
    heatmaps: str | None,
    store_layer: bool,
    ordinal: bool | None,
    storage_options: str | None,
) -> None:
    """Predict the class of each store with a checkpoint; write a CSV (and heat maps)."""
    opts = parse_storage_options(storage_options)
    check_writable(out, "--out")
    if heatmaps:
        check_writable(heatmaps, "--heatmaps", folder=True)
    ck = _checkpoint_file(checkpoint)
    from ..training.inference import predict_stores  # torch: after the quick checks

    preds = predict_stores(
        ck, list(stores), out, heatmaps, opts, ordinal=ordinal, store_layer=store_layer
    )
    for p in preds:
        grade = f"  expected grade {p['expected_grade']:.2f}" if "expected_grade" in p else ""
        click.echo(f"{p['slide_id']}: class {p['pred']}  p={max(p['probs']):.3f}{grade}")
    click.echo(f"wrote {out}" + (f" and {heatmaps}" if heatmaps else ""))
