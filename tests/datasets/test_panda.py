"""Tests of PANDA preparation (wsi_patchgd.datasets.panda) on a miniature fake PANDA tree."""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import click
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tests.conftest import REPO
from wsi_patchgd.cli.datasets import prepare_panda_command
from wsi_patchgd.data.manifest import read_manifest
from wsi_patchgd.datasets.panda import PandaResult, panda_manifest, prepare_panda
from wsi_patchgd.errors import ConfigError, ManifestError
from wsi_patchgd.readers import open_slide
from wsi_patchgd.store import SlideStore

GRADES = [0, 0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 5]
PROVIDERS = ["radboud", "karolinska"]
GLEASON = {0: "0+0", 1: "3+3", 2: "3+4", 3: "4+4", 4: "4+4", 5: "4+5"}
MISSING = "ffff0000missing"
H, W = 768, 1024


def _he_image(seed: int) -> np.ndarray:
    """H&E-like: an ellipse of pink stroma with purple nuclei on near-white glass."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 242, np.uint8)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = rng.integers(300, 460), rng.integers(400, 620)
    tissue = ((yy - cy) / 250.0) ** 2 + ((xx - cx) / 360.0) ** 2 < 1
    nuclei = tissue & (rng.random((H, W)) < 0.12)
    img[tissue] = (222, 150, 190)
    img[nuclei] = (120, 70, 160)
    return img


def _write_panda_tiff(path: Path, img: np.ndarray) -> None:
    """Like PANDA's files: JPEG-tiled level 0, then 1/4 and 1/16 reduced-resolution pages."""
    with tifffile.TiffWriter(path) as tw:
        for f in (1, 4, 16):
            lv = np.ascontiguousarray(img[::f, ::f])
            tile = 256 if min(lv.shape[:2]) >= 256 else 16
            tw.write(
                lv,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1 if f > 1 else 0,
            )


def _write_csv(root: Path, rows: list[tuple[str, str, int]]) -> None:
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "data_provider", "isup_grade", "gleason_score"])
        for iid, prov, grade in rows:
            w.writerow([iid, prov, grade, GLEASON.get(grade, "x")])


@pytest.fixture(scope="module")
def panda_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("panda")
    (root / "train_images").mkdir()
    rows = []
    for i, g in enumerate(GRADES):
        iid = f"{i:04x}{'ab' * 14}"
        _write_panda_tiff(root / "train_images" / f"{iid}.tiff", _he_image(i))
        rows.append((iid, PROVIDERS[i % 2], g))
    rows.insert(5, (MISSING, "radboud", 2))  # listed, but no image
    _write_csv(root, rows)
    return root


@pytest.fixture(scope="module")
def prepared(panda_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PandaResult:
    out = tmp_path_factory.mktemp("panda-out")
    with pytest.warns(UserWarning, match="1 image.*missing"):
        return prepare_panda(
            panda_root, out, folds=3, seed=0, patch_size=128, workers=2, quiet=True
        )


def _csv_grades(root: Path) -> dict[str, int]:
    with open(root / "train.csv", newline="") as fh:
        return {r["image_id"]: int(r["isup_grade"]) for r in csv.DictReader(fh)}


# ------------------------------------------------------------------------------------------
# the fake tree is like PANDA's files


def test_fake_images_read_as_pyramids(panda_root: Path) -> None:
    path = next((panda_root / "train_images").iterdir())
    with open_slide(path) as r:
        assert [(lv.width, lv.height) for lv in r.levels] == [(1024, 768), (256, 192), (64, 48)]


# ------------------------------------------------------------------------------------------
# prepare_panda end to end


def test_prepare_writes_complete_stores_with_the_grades(
    prepared: PandaResult, panda_root: Path
) -> None:
    grades = _csv_grades(panda_root)
    assert prepared.skipped == [
        f"{MISSING}: {panda_root / 'train_images' / (MISSING + '.tiff')} missing"
    ]
    assert prepared.dropped == []
    assert [r.status for r in prepared.conversions] == ["ok"] * len(GRADES)
    rows = read_manifest(prepared.manifest, num_classes=6)  # opens every store
    assert len(rows) == len(GRADES)
    assert MISSING not in {r.slide_id for r in rows}
    with open(panda_root / "train.csv", newline="") as fh:
        providers = {r["image_id"]: r["data_provider"] for r in csv.DictReader(fh)}
    for r in rows:
        assert r.label == grades[r.slide_id]
        assert r.provider == providers[r.slide_id] != ""  # kept for per-provider evaluation
        s = SlideStore(r.store)
        assert s.complete and s.patch_size == 128
        assert s.level_shape(0) == (H, W) and s.n_levels == 2
        assert 0.2 < s.tissue_fraction < 0.6  # the ellipse is found as tissue
    out = Path(prepared.manifest).parent
    assert (out / "convert-report.json").is_file()
    with open(prepared.manifest, newline="") as fh:
        stores = [r["store"] for r in csv.DictReader(fh)]
    assert all(s.startswith("stores/") and s.endswith(".zarr") for s in stores)  # relative


def test_store_pixels_are_the_image(prepared: PandaResult, panda_root: Path) -> None:
    row = read_manifest(prepared.manifest)[0]  # store paths resolved
    src = panda_root / "train_images" / f"{row.slide_id}.tiff"
    level0 = tifffile.imread(src, level=0)
    got = SlideStore(row.store).read_region(0, 0, 0, W, H)
    np.testing.assert_array_equal(got, level0)


def test_folds_are_stratified_by_grade(prepared: PandaResult) -> None:
    by_fold: dict[int, list[int]] = {}
    for r in prepared.rows:
        by_fold.setdefault(r.fold, []).append(r.label)
    assert sorted(by_fold) == [0, 1, 2]
    for labels in by_fold.values():
        assert sorted(labels) == [0, 1, 3, 5]  # 3 of each grade -> one per fold


def test_rerun_skips_converted_and_checks_level(prepared: PandaResult, panda_root: Path) -> None:
    out = Path(prepared.manifest).parent
    with pytest.warns(UserWarning):
        again = prepare_panda(panda_root, out, folds=3, patch_size=128, level=1, quiet=True)
    assert [r.status for r in again.conversions] == ["skipped"] * len(GRADES)
    assert again.rows == prepared.rows
    with pytest.warns(UserWarning), pytest.raises(ManifestError, match="no level 2.*--level"):
        panda_manifest(panda_root, out / "m2.csv", str(out / "stores"), folds=3, level=2)


def test_cli_prepare_panda(prepared: PandaResult, panda_root: Path) -> None:
    @click.group()
    def cli() -> None:
        pass

    cli.add_command(prepare_panda_command)
    out = Path(prepared.manifest).parent
    res = CliRunner().invoke(
        cli, ["prepare-panda", str(panda_root), "--out", str(out), "--folds", "3", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "12 images in 3 folds (4, 4, 4); 1 missing, 0 left out" in res.output
    assert f"skipped (no image): {MISSING}" in res.output
    res = CliRunner().invoke(cli, ["prepare-panda", str(out), "--out", str(out / "x")])
    assert res.exit_code == 2
    assert res.output.count("error:") == 1 and "train.csv: not found" in res.output


# ------------------------------------------------------------------------------------------
# manifest rules (placeholder image files: only their existence is checked)


def _tree(tmp_path: Path, rows: list[tuple[str, str, int]]) -> Path:
    root = tmp_path / "root"
    (root / "train_images").mkdir(parents=True)
    for iid, _, _ in rows:
        (root / "train_images" / f"{iid}.tiff").write_bytes(b"placeholder")
    _write_csv(root, rows)
    return root


def _many() -> list[tuple[str, str, int]]:
    return [(f"{p[0]}{g}{k:02d}", p, g) for p in PROVIDERS for g in range(6) for k in range(10)]


def test_folds_stratified_by_grade_and_provider(tmp_path: Path) -> None:
    rows = _many()
    root = _tree(tmp_path, rows)
    got = panda_manifest(root, tmp_path / "m.csv", str(tmp_path / "stores"), folds=5, seed=1)
    assert got.skipped == [] and len(got) == 120
    prov = {iid: p for iid, p, _ in rows}
    per = Counter((r.fold, prov[r.slide_id], r.label) for r in got)
    assert set(per.values()) == {2}  # 10 per (provider, grade) -> 2 in each of 5 folds
    assert read_manifest(str(tmp_path / "m.csv"), check_stores=False)[0].store.endswith(".zarr")
    # the row order of train.csv does not matter; the seed does
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    _write_csv(root, shuffled)
    same = panda_manifest(root, tmp_path / "m2.csv", str(tmp_path / "stores"), folds=5, seed=1)
    assert {r.slide_id: r.fold for r in same} == {r.slide_id: r.fold for r in got}
    other = panda_manifest(root, tmp_path / "m3.csv", str(tmp_path / "stores"), folds=5, seed=2)
    assert {r.slide_id: r.fold for r in other} != {r.slide_id: r.fold for r in got}


def test_bad_grade_names_the_row(tmp_path: Path) -> None:
    rows = _many()[:20]
    rows[7] = (rows[7][0], rows[7][1], 6)
    root = _tree(tmp_path, rows)
    with pytest.raises(ManifestError, match=rf"train.csv line 9 \({rows[7][0]}\): isup_grade '6'"):
        panda_manifest(root, tmp_path / "m.csv", "stores")
    lines = (root / "train.csv").read_text().splitlines()
    lines[8] = f"{rows[7][0]},radboud,0,0+0"
    lines[4] = f"{rows[3][0]},radboud,x,0+0"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match="line 5 .*isup_grade 'x' is not an ISUP grade"):
        panda_manifest(root, tmp_path / "m.csv", "stores")


def test_bad_csv_and_arguments(tmp_path: Path) -> None:
    root = _tree(tmp_path, _many()[:10])
    with pytest.raises(ConfigError, match="10 image.*for 20 folds"):
        panda_manifest(root, tmp_path / "m.csv", "stores", folds=20)
    with pytest.raises(ConfigError, match="folds=1"):
        panda_manifest(root, tmp_path / "m.csv", "stores", folds=1)
    (root / "train.csv").write_text("image_id,isup_grade\na,1\n")
    with pytest.raises(ManifestError, match="missing column.*data_provider"):
        panda_manifest(root, tmp_path / "m.csv", "stores")
    (root / "train.csv").write_text("image_id,data_provider,isup_grade\na,r,1\na,r,2\n")
    with pytest.raises(ManifestError, match="line 3: image_id 'a' appears twice"):
        panda_manifest(root, tmp_path / "m.csv", "stores")
    with pytest.raises(ConfigError, match="train.csv: not found"):
        panda_manifest(tmp_path / "nothing", tmp_path / "m.csv", "stores")


def test_train_on_the_prepared_panda_manifest(prepared: PandaResult, tmp_path: Path) -> None:
    """The PANDA pipeline end to end: prepared manifest -> one PatchGD epoch, 6 ISUP classes,
    QWK reported (a tiny backbone setting; the numbers mean nothing, the plumbing does)."""
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    manifest = Path(prepared.manifest)
    cfg = load_config(
        REPO / "pipelines" / "panda-2048.yaml",
        [
            f"data.manifest={manifest}",
            "data.level=1",
            "data.patch_size=64",
            "data.train_folds=[1, 2]",
            "data.val_folds=[0]",
            "model.backbone=mobilenet_v3_small",
            "model.latent_dim=32",
            "model.head_channels=32",
            "model.head_convs=1",
            "patchgd.fill_batch_size=32",
            "schedule.epochs=1",
            "schedule.batch_size=2",
            "precision=fp32",
            "output.heatmaps=1",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    s = train(cfg, quiet=True)
    assert s["epochs"] == 1 and s["val_qwk"] is not None
    assert len(s["predictions"]) == sum(r.fold == 0 for r in prepared.rows)
    assert (tmp_path / "run" / "plots" / "curves.png").is_file()
