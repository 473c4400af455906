"""A labelled set of synthetic slides, optionally converted to stores with a manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .slide import write_synthetic_slide


def make_synthetic_dataset(
    out: str | os.PathLike[str],
    n_slides: int,
    side: int,
    *,
    n_classes: int = 2,
    n_markers: int = 3,
    seed: int = 0,
    val_every: int = 3,
    convert: bool = True,
    patch_size: int = 256,
    workers: int | None = None,
    log: Any = None,
    dashboard: bool = False,
) -> Path:
    """A labelled set of synthetic slides (and, with ``convert``, their stores + a manifest).

    Slide ``i`` gets label ``i % n_classes``; every ``val_every``-th slide is fold 1
    (validation), the rest fold 0. Existing slide files are kept (re-running resumes). Writes
    ``out/slides/slide<i>.tif``, ``out/labels.csv`` (file, label, fold, marker boxes) and, with
    ``convert``, ``out/stores/`` and ``out/manifest.csv``. ``dashboard``: serve the
    conversion's local Dask dashboard on 127.0.0.1 and print its URL.

    Returns:
        The manifest path (``convert``) or the labels path.

    Raises:
        ConfigError: bad sizes or counts; RuntimeError if a conversion fails.
    """
    import csv
    import json as _json

    from ...data.manifest import ManifestRow, write_manifest

    if n_slides < 1:
        raise ConfigError(f"n_slides={n_slides}: need at least one slide")
    root = Path(out)
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    paths: list[str] = []
    known: dict[str, str] = {}  # marker boxes of slides written by an earlier run
    if (root / "labels.csv").exists():
        with open(root / "labels.csv", newline="") as fh:
            known = {r["file"]: r["markers"] for r in csv.DictReader(fh)}
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "fold", "markers"])
        for i in range(n_slides):
            label = i % n_classes
            fold = 1 if val_every and i % val_every == val_every - 1 else 0
            p = slides / f"slide{i:03d}.tif"
            res = None
            if not p.exists():
                res = write_synthetic_slide(
                    p,
                    side,
                    seed=seed * 100003 + i,
                    label=label,
                    n_classes=n_classes,
                    n_markers=n_markers,
                    texture_seed=seed,
                )
                if log:
                    log(f"  slide {i + 1}/{n_slides}: {p.name} (label {label})")
            markers = _json.dumps(res.markers) if res else known.get(p.name, "null")
            w.writerow([p.name, label, fold, markers])
            paths.append(str(p))
            rows.append(ManifestRow(p.stem, f"stores/{p.stem}.zarr", label, fold))
    if not convert:
        return root / "labels.csv"
    from ...store import ConvertOptions, convert_many

    results = convert_many(
        paths,
        str(root / "stores"),
        ConvertOptions(patch_size=patch_size),
        workers=workers,
        quiet=True,
        report=str(root / "convert-report.json"),
        dashboard=dashboard,
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"conversion failed: {failed[0].reason}")
    write_manifest(str(root / "manifest.csv"), rows)
    return root / "manifest.csv"
