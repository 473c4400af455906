"""``wsi-patchgd demo``: the main job on a fresh machine (no data, no internet)."""

from __future__ import annotations

import click

from . import one_line_errors
from .options import check_writable


@click.command("demo")
@click.option("--out", default="out/demo", show_default=True)
@click.option(
    "--slides",
    "n_slides",
    default=72,
    show_default=True,
    help="Number of slides; every third one is a validation slide.",
)
@click.option(
    "--side",
    type=click.IntRange(256, 262_144),
    default=2048,
    show_default=True,
    help="Slide side in pixels.",
)
@click.option("--epochs", default=6, show_default=True)
@click.option(
    "--memory-budget",
    "budget",
    default="1GB",
    show_default=True,
    help="Memory budget of both methods: PatchGD's k and GD's image side are planned to fit it.",
)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Threads of the conversion."
)
@click.option("--quiet", "-q", is_flag=True)
@one_line_errors
def command(
    out: str,
    n_slides: int,
    side: int,
    epochs: int,
    budget: str,
    backbone: str,
    seed: int,
    workers: int | None,
    quiet: bool,
) -> None:
    """Generate synthetic slides, convert them, train PatchGD and GD, write a report."""
    check_writable(out, "--out", folder=True)
    from ..demo import run_demo

    report = run_demo(
        out,
        n_slides=n_slides,
        side=side,
        epochs=epochs,
        budget=budget,
        backbone=backbone,
        seed=seed,
        workers=workers,
        quiet=quiet,
    )
    click.echo(f"report: {report}")
