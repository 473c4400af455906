"""``wsi-patchgd convert``: slides -> sharded OME-Zarr stores, on this machine or a Dask cluster."""

from __future__ import annotations

import sys

import click

from ..store import CODECS, ConvertOptions, convert_many
from ..tissue import TissueParams
from . import one_line_errors
from .options import (
    check_writable,
    dashboard_option,
    overwrite_option,
    parse_storage_options,
    scheduler_option,
    storage_options_option,
)


@click.command("convert")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out", required=True, help="Output root (path or s3:// / gs:// URL).")
@click.option("--patch-size", default=256, show_default=True, help="Chunk side = patch size.")
@click.option("--shard-patches", default=8, show_default=True, help="Shard side in patches.")
@click.option(
    "--levels",
    "max_levels",
    type=int,
    default=None,
    help="At most this many pyramid levels (default: down to ~512 px).",
)
@click.option(
    "--codec",
    type=click.Choice(CODECS),
    default="blosc-lz4",
    show_default=True,
    help="Lossless chunk codec. 'jpeg': keep the source's JPEG tiles unchanged where they are "
    "exactly --patch-size (e.g. 240 for most SVS, 256 for most pyramidal TIFFs): several times "
    "faster and ~10x smaller, same pixels as the source decoder, but only readable with "
    "wsi_patchgd installed; other levels use blosc-lz4.",
)
@click.option(
    "--reader",
    type=click.Choice(["auto", "openslide", "tifffile", "pillow"]),
    default="auto",
    show_default=True,
)
@scheduler_option
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Threads (default: all cores)."
)
@dashboard_option
@overwrite_option
@click.option("--report", default=None, help="Write a JSON report of every slide here.")
@click.option("--quiet", "-q", is_flag=True, help="A line per slide instead of a bar.")
@storage_options_option
@one_line_errors
def command(
    inputs: tuple[str, ...],
    out: str,
    patch_size: int,
    shard_patches: int,
    max_levels: int | None,
    codec: str,
    reader: str,
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
    report: str | None,
    quiet: bool,
    storage_options: str | None,
    dashboard: bool,
) -> None:
    """Convert slides (files, globs or URLs) into one store each under OUT.

    Complete stores are skipped, incomplete ones resumed; a failing slide is reported and the
    others go on. Exit code 1 when any slide failed.
    """
    opts = parse_storage_options(storage_options)
    options = ConvertOptions(
        patch_size=patch_size,
        shard_patches=shard_patches,
        max_levels=max_levels,
        codec=codec,
        reader=reader,
        tissue=TissueParams(),
        overwrite=overwrite,
    )
    check_writable(out, "--out", folder=True)  # before any slide is converted
    if report:  # now, not after all of them
        check_writable(report, "--report")
    results = convert_many(
        list(inputs),
        out,
        options,
        scheduler=scheduler,
        workers=workers,
        report=report,
        quiet=quiet,
        source_options=opts,
        store_options=opts,
        dashboard=dashboard,
    )
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    click.echo(
        f"{counts['ok']} converted, {counts['skipped']} skipped (complete), "
        f"{counts['failed']} failed" + (f"; report: {report}" if report else "")
    )
    for r in results:
        if r.status == "ok":
            click.echo(
                f"  {r.store}  ({r.levels} levels, {r.megapixels:.1f} MP, {r.seconds:.1f} s)"
            )
    if counts["failed"]:
        sys.exit(1)
