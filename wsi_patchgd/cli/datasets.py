"""``wsi-patchgd make-ultramnist`` and ``wsi-patchgd prepare-panda``: datasets -> stores."""

from __future__ import annotations

import sys

import click

from . import one_line_errors
from .options import check_writable, dashboard_option, overwrite_option, scheduler_option


@click.command("make-ultramnist")
@click.option("--out", "out", required=True, help="Output folder (stores/, manifest.csv).")
@click.option("--n-train", type=click.IntRange(min=0), required=True, help="Training canvases.")
@click.option("--n-val", type=click.IntRange(min=0), required=True, help="Validation canvases.")
@click.option("--side", type=int, default=512, show_default=True, help="Canvas side, pixels.")
@click.option(
    "--classes",
    type=click.Choice(["28", "10"]),
    default="28",
    show_default=True,
    help="28: label = digit sum; 10: label = digit sum mod 10 (--label max and sum10 always "
    "have 10).",
)
@click.option(
    "--label",
    type=click.Choice(["sum", "max", "sum10"]),
    default="sum",
    show_default=True,
    help="sum: the paper's digit sum (28 classes, or mod 10); max: the largest digit (10 "
    "classes); sum10: the paper's 10-class variant, digit sum of digit sets summing to 0..9, "
    "digits 1x..9x of 28 px at 512 px.",
)
@click.option(
    "--digit-sizes",
    default=None,
    metavar="MIN,MAX",
    help="Smallest and largest digit side on the canvas, pixels, e.g. 16,48 (default: "
    "max(8, side/40)..side/2; for --label sum10 28..252 scaled by side/512).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of pools, labels and layouts."
)
@click.option(
    "--mnist-dir",
    default=None,
    help="Folder of the MNIST IDX files (default: $WSI_PATCHGD_MNIST or ../shared/data/mnist).",
)
@click.option("--patch-size", type=int, default=32, show_default=True, help="Chunk = patch side.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default: cores, max 8)."
)
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --out.")
@click.option("--quiet", "-q", is_flag=True, help="A line every 10 % instead of a bar.")
@one_line_errors
def make_ultramnist_command(
    out: str,
    n_train: int,
    n_val: int,
    side: int,
    classes: str,
    label: str,
    digit_sizes: str | None,
    seed: int,
    mnist_dir: str | None,
    patch_size: int,
    workers: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Generate UltraMNIST canvases (3-5 MNIST digits, label = their sum) into stores."""
    from ..datasets.ultramnist import make_ultramnist
    from ..errors import ConfigError

    check_writable(out, "--out", folder=True)

    sizes: tuple[int, int] | None = None
    if digit_sizes is not None:
        parts = digit_sizes.replace(" ", "").split(",")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ConfigError(
                f"--digit-sizes {digit_sizes!r}: give MIN,MAX digit sides in pixels, e.g. 16,48"
            )
        sizes = (int(parts[0]), int(parts[1]))
    manifest = make_ultramnist(
        out,
        n_train,
        n_val,
        side=side,
        classes=10 if label in ("max", "sum10") else int(classes),
        label=label,
        digit_sizes=sizes,
        seed=seed,
        mnist_dir=mnist_dir,
        patch_size=patch_size,
        workers=workers,
        quiet=quiet,
        overwrite=overwrite,
    )
    click.echo(f"{n_train + n_val} canvases ({n_train} train, {n_val} val); manifest: {manifest}")


@click.command("prepare-panda")
@click.argument("root")
@click.option("--out", "out", required=True, help="Output folder (stores/, manifest.csv).")
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds.")
@click.option("--patch-size", type=int, default=128, show_default=True, help="Chunk = patch side.")
@click.option(
    "--level", type=int, default=None, help="Level training will read (kept stores have it)."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Threads (default: all cores)."
)
@scheduler_option
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="A line per image instead of a bar.")
@dashboard_option
@one_line_errors
def prepare_panda_command(
    root: str,
    out: str,
    folds: int,
    seed: int,
    patch_size: int,
    level: int | None,
    workers: int | None,
    scheduler: str | None,
    overwrite: bool,
    quiet: bool,
    dashboard: bool,
) -> None:
    """Manifest with stratified folds for the PANDA folder ROOT, and its images as stores.

    ROOT holds train.csv and train_images/ (the Kaggle layout). Rows whose image is missing are
    skipped; images that fail to convert are left out of the manifest. Exit code 1 when any
    image was left out.
    """
    import warnings

    from ..datasets.panda import prepare_panda

    check_writable(out, "--out", folder=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the skipped rows are listed below
        res = prepare_panda(
            root,
            out,
            folds=folds,
            seed=seed,
            patch_size=patch_size,
            level=level,
            workers=workers,
            scheduler=scheduler,
            quiet=quiet,
            overwrite=overwrite,
            dashboard=dashboard,
        )
    for msg in res.skipped:
        click.echo(f"skipped (no image): {msg}", err=True)
    for msg in res.dropped:
        click.echo(f"left out: {msg}", err=True)
    counts = [sum(r.fold == f for r in res.rows) for f in range(folds)]
    click.echo(
        f"{len(res.rows)} images in {folds} folds ({', '.join(map(str, counts))}); "
        f"{len(res.skipped)} missing, {len(res.dropped)} left out; manifest: {res.manifest}"
    )
    if res.dropped:
        sys.exit(1)


@click.command("make-synthetic")
@click.option("--out", "out", required=True, help="Output folder (slides/, labels.csv, ...).")
@click.option("--n", "n_slides", type=click.IntRange(min=1), required=True, help="Slides.")
@click.option(
    "--side", type=click.IntRange(256, 262_144), default=8192, show_default=True, help="Slide side."
)
@click.option("--classes", type=click.IntRange(2, 64), default=2, show_default=True)
@click.option(
    "--markers", type=click.IntRange(1, 256), default=3, show_default=True, help="Marker regions."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--convert/--no-convert",
    default=True,
    show_default=True,
    help="Also convert into stores and write manifest.csv.",
)
@click.option("--patch-size", type=int, default=256, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Threads of the conversion."
)
@dashboard_option
@one_line_errors
def make_synthetic_command(
    out: str,
    n_slides: int,
    side: int,
    classes: int,
    markers: int,
    seed: int,
    convert: bool,
    patch_size: int,
    workers: int | None,
    dashboard: bool,
) -> None:
    """Pyramidal JPEG-tiled TIFF slides with H&E-like texture; the class shows only in a few
    small marker regions. Slide i has label i % CLASSES; every third slide is validation."""
    from ..datasets.synthetic import make_synthetic_dataset

    check_writable(out, "--out", folder=True)
    path = make_synthetic_dataset(
        out,
        n_slides,
        side,
        n_classes=classes,
        n_markers=markers,
        seed=seed,
        convert=convert,
        patch_size=patch_size,
        workers=workers,
        log=lambda m: click.echo(m, err=True),
        dashboard=dashboard,
    )
    click.echo(f"wrote {path}")
