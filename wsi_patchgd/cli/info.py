"""``wsi-patchgd info``: what a slide or store is."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import StoreError
from ..readers import open_slide
from ..store import StoreReader  # importing the store registers its reader with open_slide
from ..tissue import tissue_fraction
from . import one_line_errors
from .options import parse_storage_options, storage_options_option


def describe(
    source: str, storage_options: dict[str, Any] | None = None, reader: str = "auto"
) -> dict[str, Any]:
    """Format, reader, levels, mpp, objective power and tissue fraction of a slide or store.

    Raises:
        SlideReadError: not a readable slide or store; for a store that cannot be opened
            (incomplete, interrupted rebuild ...), the store's own message: what is missing
            and what to do.
        StoreError: a store marked complete but lacking arrays the format lists (one line
            that names them and says how to repair it).
    """
    with open_slide(source, storage_options, reader) as r:
        info = r.info()
        if isinstance(r, StoreReader):
            problems = r.store.verify()
            if problems:
                raise StoreError(
                    f"{source}: store is marked complete but damaged ({'; '.join(problems)}); "
                    "rerun `wsi-patchgd convert` on its source to repair it"
                )
            frac = r.properties.get("store.tissue_fraction")
        else:
            frac = tissue_fraction(r.thumbnail(2048))
    return {
        "source": info.source,
        "format": info.format,
        "reader": info.reader,
        "vendor": info.vendor,
        "levels": [
            {"level": i, "width": lv.width, "height": lv.height, "downsample": lv.downsample}
            for i, lv in enumerate(info.levels)
        ],
        "mpp": info.mpp,
        "objective_power": info.objective_power,
        "tissue_fraction": frac,
    }


@click.command("info")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--reader", default="auto", show_default=True)
@storage_options_option
@one_line_errors
def command(source: str, as_json: bool, reader: str, storage_options: str | None) -> None:
    """Describe a slide or a store: format, reader, levels, mpp, objective, tissue fraction."""
    d = describe(source, parse_storage_options(storage_options), reader)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"source:          {d['source']}")
    click.echo(f"format:          {d['format']} (reader: {d['reader']}, vendor: {d['vendor']})")
    mpp = f"{d['mpp']:.4g} um/px" if d["mpp"] else "unknown"
    click.echo(f"mpp:             {mpp}")
    op = f"{d['objective_power']:g}x" if d["objective_power"] else "unknown"
    click.echo(f"objective power: {op}")
    tf = d["tissue_fraction"]
    click.echo(f"tissue fraction: {tf:.3f}" if tf is not None else "tissue fraction: unknown")
    click.echo("levels:")
    for lv in d["levels"]:
        click.echo(
            f"  {lv['level']}: {lv['width']} x {lv['height']}  (downsample {lv['downsample']:.4g})"
        )
