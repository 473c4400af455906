"""Manifests: a CSV of ``slide_id, store, label, fold`` (one row per slide)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ManifestError, StoreError, StoreIncompleteError
from ..io import StorageOptions, filesystem, is_remote, local_path

REQUIRED = ("slide_id", "store", "label")
#: characters a slide id must not hold: they cannot be part of a file name on some system
UNSAFE_ID = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest."""

    slide_id: str
    store: str
    label: int
    fold: int
    provider: str = ""  # where the slide comes from (PANDA: radboud / karolinska), if known


def read_manifest(
    url: str,
    num_classes: int | None = None,
    *,
    check_stores: bool = True,
    storage_options: StorageOptions | None = None,
) -> list[ManifestRow]:
    """Read and validate a manifest.

    Relative store paths are taken relative to the manifest's folder. A missing ``fold`` column
    puts every row in fold 0.

    Args:
        url: path or URL of the CSV.
        num_classes: labels must lie in ``[0, num_classes)`` when given.
        check_stores: open every store and require it complete.
        storage_options: fsspec options for remote manifests and stores.

    Raises:
        ManifestError: naming the file, row and what to fix.
    """
    fs, path = filesystem(url, storage_options)
    try:
        if fs.isdir(path):
            raise ManifestError(f"{url}: is a folder, not a manifest; give the CSV file")
        text = fs.cat_file(path).decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ManifestError(f"{url}: manifest not found") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{url}: not UTF-8 text (byte {exc.start}); save the manifest as a UTF-8 CSV"
        ) from exc
    except OSError as exc:
        raise ManifestError(
            f"{url}: cannot read the manifest ({exc.strerror or exc}); check the path and its "
            "permissions"
        ) from exc
    try:
        reader = csv.DictReader(io.StringIO(text))
        cols = reader.fieldnames or []
        records = list(reader)
    except csv.Error as exc:
        raise ManifestError(f"{url}: not a valid CSV ({exc}); fix the file") from exc
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ManifestError(
            f"{url}: missing column(s) {', '.join(missing)}; need slide_id,store,label[,fold]"
        )
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for n, rec in enumerate(records, start=2):  # line numbers as an editor shows them
        where = f"{url} line {n}"
        sid = (rec.get("slide_id") or "").strip()
        if not sid:
            raise ManifestError(f"{where}: empty slide_id")
        bad = UNSAFE_ID.search(sid)
        if bad or sid in (".", ".."):
            what = f"contains {bad.group()!r}" if bad else "is not a name"
            raise ManifestError(
                f"{where}: slide_id {sid!r} {what}; slide ids name files (heat maps), so use "
                "letters, digits, '.', '-' and '_'"
            )
        if sid in seen:
            raise ManifestError(f"{where}: slide_id {sid!r} appears twice")
        seen.add(sid)
        try:
            label = int(str(rec["label"]).strip())
        except ValueError as exc:
            raise ManifestError(
                f"{where} ({sid}): label {rec['label']!r} is not an integer"
            ) from exc
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ManifestError(
                f"{where} ({sid}): label {label} outside the classes 0..{(num_classes or 1) - 1}; "
                "fix the label or model.num_classes"
            )
        fold_s = (rec.get("fold") or "0").strip() or "0"
        try:
            fold = int(fold_s)
        except ValueError as exc:
            raise ManifestError(f"{where} ({sid}): fold {fold_s!r} is not an integer") from exc
        store = (rec.get("store") or "").strip()
        if not store:
            raise ManifestError(f"{where} ({sid}): empty store")
        if not is_remote(store) and not local_path(store).is_absolute() and not is_remote(url):
            store = str(local_path(base) / store)
        elif not is_remote(store) and is_remote(url) and "://" not in store:
            store = f"{base}/{store}"
        provider = (rec.get("provider") or rec.get("data_provider") or "").strip()
        rows.append(ManifestRow(sid, store, label, fold, provider))
    if not rows:
        raise ManifestError(f"{url}: no rows")
    if check_stores:
        check_manifest_stores(rows, url, storage_options)
    return rows


def check_manifest_stores(
    rows: Sequence[ManifestRow], url: str, storage_options: StorageOptions | None = None
) -> None:
    """Open every store; raise ManifestError for the first missing or incomplete one."""
    from ..store.slide_store import SlideStore

    for r in rows:
        try:
            SlideStore(r.store, storage_options)
        except StoreIncompleteError as exc:
            raise ManifestError(
                f"{url} ({r.slide_id}): store {r.store} is incomplete; rerun `wsi-patchgd "
                "convert` on its slide"
            ) from exc
        except StoreError as exc:
            raise ManifestError(
                f"{url} ({r.slide_id}): store {r.store} is missing or not a store; convert the "
                "slide first (`wsi-patchgd convert`)"
            ) from exc


def write_manifest(url: str, rows: Sequence[ManifestRow]) -> None:
    """Write a manifest CSV (local path); a ``provider`` column when any row has one."""
    p = local_path(url)
    p.parent.mkdir(parents=True, exist_ok=True)
    with_provider = any(r.provider for r in rows)
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "store", "label", "fold"] + (["provider"] if with_provider else []))
        for r in rows:
            w.writerow(
                [r.slide_id, r.store, r.label, r.fold] + ([r.provider] if with_provider else [])
            )
