"""PANDA (Kaggle "Prostate cANcer graDe Assessment"): manifest with stratified folds, conversion.

The Kaggle layout::

    <root>/train.csv                 image_id, data_provider, isup_grade, gleason_score
    <root>/train_images/<id>.tiff    multi-level JPEG-compressed TIFF (levels 1, 1/4, 1/16)

:func:`panda_manifest` reads ``train.csv``, skips (and reports) rows whose image is missing,
checks every ISUP grade is in 0..5 and assigns cross-validation folds with scikit-learn's
``StratifiedKFold``, stratified by ISUP grade and data provider together (strata smaller than
the number of folds fall back to the grade alone, then to one shared stratum). Rows are sorted by
``image_id`` first, so the folds do not depend on the CSV's row order. :func:`prepare_panda`
then converts the images with :func:`~wsi_patchgd.store.convert_many` and keeps in the manifest
only the images that converted.

Labels are the ISUP grade (6 classes, 0..5); ``gleason_score`` is not used.
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.manifest import ManifestRow, write_manifest
from ..errors import ConfigError, ManifestError, StoreError, WsiPatchGDError
from ..io import is_remote, join
from ..store import ConvertOptions, SlideResult, SlideStore, convert_many, store_name

__all__ = [
    "ISUP_GRADES",
    "PandaManifest",
    "PandaResult",
    "panda_manifest",
    "prepare_panda",
]

#: ISUP grade groups (0 = benign / no cancer); the class labels.
ISUP_GRADES = range(6)
REQUIRED_COLUMNS = ("image_id", "data_provider", "isup_grade")
IMAGE_DIR = "train_images"
IMAGE_EXT = ".tiff"


class PandaManifest(list[ManifestRow]):
    """The manifest rows, plus the ``train.csv`` rows skipped because their image is missing.

    Attributes:
        skipped: one message per skipped row (``image_id: <path> missing``).
    """

    def __init__(self, rows: list[ManifestRow], skipped: list[str]) -> None:
        super().__init__(rows)
        self.skipped = skipped


@dataclass
class PandaResult:
    """What :func:`prepare_panda` did.

    Attributes:
        manifest: path of the manifest (only images whose store is complete).
        rows: its rows, as written (store paths relative to the manifest's folder;
            :func:`~wsi_patchgd.data.read_manifest` resolves them).
        skipped: ``train.csv`` rows without an image file.
        conversions: one conversion result per image.
        dropped: images left out of the manifest after conversion, with the reason.
    """

    manifest: str
    rows: list[ManifestRow]
    skipped: list[str] = field(default_factory=list)
    conversions: list[SlideResult] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Record:
    image_id: str
    provider: str
    grade: int
    path: Path


def _read_train_csv(root: Path) -> tuple[list[_Record], list[str]]:
    """Records of images that exist, and messages for rows whose image is missing."""
    csv_path = root / "train.csv"
    if not csv_path.is_file():
        raise ConfigError(
            f"{csv_path}: not found; ROOT must be the PANDA folder holding train.csv and "
            f"{IMAGE_DIR}/ (kaggle competitions download -c prostate-cancer-grade-assessment)"
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise ManifestError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; PANDA's train.csv has "
                "image_id,data_provider,isup_grade,gleason_score"
            )
        records: list[_Record] = []
        skipped: list[str] = []
        seen: set[str] = set()
        for n, rec in enumerate(reader, start=2):
            where = f"{csv_path} line {n}"
            iid = (rec.get("image_id") or "").strip()
            if not iid:
                raise ManifestError(f"{where}: empty image_id; fix or delete the row")
            if iid in seen:
                raise ManifestError(f"{where}: image_id {iid!r} appears twice; delete one row")
            seen.add(iid)
            raw = (rec.get("isup_grade") or "").strip()
            try:
                grade = int(raw)
            except ValueError:
                grade = -1
            if grade not in ISUP_GRADES:
                raise ManifestError(
                    f"{where} ({iid}): isup_grade {raw!r} is not an ISUP grade 0..5; fix the row"
                )
            provider = (rec.get("data_provider") or "").strip()
            path = root / IMAGE_DIR / f"{iid}{IMAGE_EXT}"
            if not path.is_file():
                skipped.append(f"{iid}: {path} missing")
                continue
            records.append(_Record(iid, provider, grade, path))
    return records, skipped


def _strata(records: list[_Record], folds: int) -> list[str]:
    """provider|grade, falling back to grade, then to one stratum, below ``folds`` members."""
    keys = [f"{r.provider}|{r.grade}" for r in records]
    counts = Counter(keys)
    keys = [k if counts[k] >= folds else f"*|{r.grade}" for k, r in zip(keys, records, strict=True)]
    counts = Counter(keys)
    return [k if counts[k] >= folds else "*" for k in keys]


def assign_folds(records: list[_Record], folds: int, seed: int) -> list[int]:
    """Fold of every record (in the given order), stratified by provider and grade."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(_strata(records, folds))
    out = np.zeros(len(records), np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" for rare strata
        for k, (_, test) in enumerate(skf.split(np.zeros(len(y)), y)):
            out[test] = k
    return [int(v) for v in out]


def _store_ref(stores_root: str, image: Path, manifest_dir: Path) -> str:
    """Store path as the manifest records it: relative to the manifest when inside its folder."""
    url = join(stores_root, store_name(str(image)))
    if is_remote(url):
        return url
    p = Path(url).absolute()
    try:
        return str(p.relative_to(manifest_dir.absolute()))
    except ValueError:
        return str(p)


def _check_level(url: str, level: int) -> str | None:
    """None if the store at url has ``level``, else why not."""
    s = SlideStore(url)
    if level >= s.n_levels:
        return f"has levels 0..{s.n_levels - 1}, no level {level}; choose a lower --level"
    return None


def panda_manifest(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    stores_root: str,
    *,
    folds: int = 5,
    seed: int = 0,
    level: int | None = None,
) -> PandaManifest:
    """Write the manifest of a PANDA folder: one row per image, with stratified folds.

    Args:
        root: the PANDA folder (``train.csv``, ``train_images/``).
        out_csv: manifest to write (local path).
        stores_root: folder (or URL) where the stores are or will be (``<image_id>.zarr``).
        folds: number of cross-validation folds (>= 2).
        seed: seed of the fold assignment.
        level: pyramid level training will read; stores that already exist must have it.

    Returns:
        The rows written (a list of :class:`~wsi_patchgd.data.ManifestRow`), with
        ``.skipped``: the ``train.csv`` rows whose image is missing (also warned about).

    Raises:
        ConfigError: no ``train.csv``, too few images for the folds, or bad arguments.
        ManifestError: a missing column, an empty or repeated ``image_id``, an ISUP grade
            outside 0..5 (naming the line), or an existing store without ``level``.
    """
    if folds < 2:
        raise ConfigError(f"folds={folds}: need at least 2 folds")
    if level is not None and level < 0:
        raise ConfigError(f"level={level}: must be >= 0")
    root_p = Path(root)
    records, skipped = _read_train_csv(root_p)
    if skipped:
        warnings.warn(
            f"{root_p / 'train.csv'}: {len(skipped)} image(s) missing from {IMAGE_DIR}/, "
            f"skipped (first: {skipped[0]})",
            stacklevel=2,
        )
    if len(records) < folds:
        raise ConfigError(
            f"{root_p}: {len(records)} image(s) found for {folds} folds; use --folds "
            f"{max(2, len(records))} or fewer, or add images to {IMAGE_DIR}/"
        )
    records.sort(key=lambda r: r.image_id)
    fold_of = assign_folds(records, folds, seed)
    manifest_dir = Path(out_csv).parent
    rows: list[ManifestRow] = []
    for r, f in zip(records, fold_of, strict=True):
        rows.append(
            ManifestRow(
                r.image_id, _store_ref(stores_root, r.path, manifest_dir), r.grade, f, r.provider
            )
        )
    if level is not None:
        for r, row in zip(records, rows, strict=True):
            url = join(stores_root, store_name(str(r.path)))
            try:
                why = _check_level(url, level)
            except StoreError:
                continue  # not converted yet (or incomplete): checked after conversion
            if why:
                raise ManifestError(f"{out_csv} ({row.slide_id}): store {url} {why}")
    write_manifest(str(out_csv), rows)
    return PandaManifest(rows, skipped)


def prepare_panda(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    folds: int = 5,
    seed: int = 0,
    patch_size: int = 128,
    level: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    dashboard: bool = False,
) -> PandaResult:
    """Build the manifest of a PANDA folder and convert its images into stores.

    Writes ``out/manifest.csv`` (stores relative to ``out``), ``out/stores/<image_id>.zarr``
    and ``out/convert-report.json``. Complete stores are skipped and incomplete ones resumed
    (as ``wsi-patchgd convert`` does), so an interrupted run can simply be repeated. Images
    that fail to convert, or lack ``level``, are left out of the manifest and listed in
    ``dropped``.

    Args:
        root: the PANDA folder (``train.csv``, ``train_images/``).
        out: output folder (local).
        folds: cross-validation folds.
        seed: seed of the fold assignment.
        patch_size: chunk side of the stores (the training patch size).
        level: pyramid level training will read (every kept store has it).
        workers: threads of the local Dask cluster (default: all cores).
        scheduler: address of a running Dask scheduler instead.
        quiet: a line per image instead of a progress bar.
        overwrite: rebuild complete stores.
        dashboard: serve the local Dask cluster's dashboard on 127.0.0.1, print its URL.

    Returns:
        What was written, skipped and dropped.

    Raises:
        ConfigError, ManifestError: as :func:`panda_manifest`.
    """
    try:
        options = ConvertOptions(patch_size=patch_size, overwrite=overwrite)
    except WsiPatchGDError as exc:
        raise ConfigError(str(exc)) from exc
    out_p = Path(out)
    stores = str(out_p / "stores")
    manifest = out_p / "manifest.csv"
    rows = panda_manifest(root, manifest, stores, folds=folds, seed=seed, level=level)
    if rows.skipped and quiet:
        print(f"{len(rows.skipped)} image(s) missing, skipped", file=sys.stderr)
    sources = [str(Path(root) / IMAGE_DIR / f"{r.slide_id}{IMAGE_EXT}") for r in rows]
    results = convert_many(
        sources,
        stores,
        options,
        scheduler=scheduler,
        workers=workers,
        report=str(out_p / "convert-report.json"),
        quiet=quiet,
        dashboard=dashboard,
    )
    dropped: list[str] = []
    keep: list[ManifestRow] = []
    for row, res in zip(rows, results, strict=True):
        if res.status == "failed":
            dropped.append(f"{row.slide_id}: conversion failed ({res.reason})")
            continue
        if level is not None:
            why = _check_level(res.store, level)
            if why:
                dropped.append(f"{row.slide_id}: store {why}")
                continue
        keep.append(row)
    write_manifest(str(manifest), keep)
    return PandaResult(str(manifest), keep, list(rows.skipped), results, dropped)
