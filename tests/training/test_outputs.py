"""What a pathologist opens: predict's CSV (probabilities, expected grade), the QuPath GeoJSON
and the OME-Zarr layer written into each store, and evaluate's bootstrap intervals and
per-provider rows. One tiny model trained on level 1 (downsample 2) of real stores."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import geojson
import numpy as np
import pytest
import shapely.geometry
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from PIL import Image

import wsi_patchgd as wp
from tests.conftest import cli
from tests.training.conftest import canvas
from wsi_patchgd.data.manifest import ManifestRow
from wsi_patchgd.errors import StoreError
from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many
from wsi_patchgd.store.layers import PatchLayout, write_patch_layer
from wsi_patchgd.training.bootstrap import bootstrap_intervals, classification_report
from wsi_patchgd.training.build import build
from wsi_patchgd.training.checkpoint import load_checkpoint
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.evaluate import latent_contributions
from wsi_patchgd.training.inference import config_from_checkpoint, evaluate_checkpoint
from wsi_patchgd.training.inference import predict_stores as predict
from wsi_patchgd.training.metrics import accuracy, qwk
from wsi_patchgd.training.trainer import train

K = 3  # classes: labels are 0 and 1 only, so probabilities and grades have a third column
SIDE = 256
PATCH = 32
LEVEL = 1
PROVIDERS = ("karolinska", "radboud")


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Eight 256 px slides (levels 256 / 128 / 64), a manifest with a provider column, and a
    one-epoch model on level 1 (32 px patches: a 4 x 4 grid, each patch 64 level-0 pixels)."""
    root = tmp_path_factory.mktemp("graded")
    rng = np.random.default_rng(1)
    pngs = []
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "store", "label", "fold", "provider"])
        for i in range(8):
            p = root / "png" / f"g{i}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(canvas(rng, i % 2, SIDE)).save(p)
            pngs.append(str(p))
            w.writerow([f"g{i}", f"stores/g{i}.zarr", i % 2, 0 if i < 4 else 1, PROVIDERS[i % 2]])
    opts = ConvertOptions(patch_size=PATCH, shard_patches=4, min_level_size=64)
    res = convert_many(pngs, str(root / "stores"), opts, workers=2, quiet=True)
    assert all(r.status == "ok" for r in res), res
    (root / "config.yaml").write_text(
        f"data:\n  manifest: manifest.csv\n  level: {LEVEL}\n  train_folds: [0]\n"
        "  val_folds: [1]\n  tissue_threshold: 0.2\n"
        f"model:\n  backbone: mobilenet_v3_small\n  num_classes: {K}\n  latent_dim: 16\n"
        "  head_channels: 16\n  head_convs: 1\n"
        "patchgd:\n  sampling_fraction: 0.5\n"
        "schedule:\n  epochs: 1\n  batch_size: 4\n  warmup_epochs: 0\n"
        "output:\n  dir: run\n  heatmaps: 0\nseed: 0\ndevice: cpu\n"
    )
    with contextlib.redirect_stderr(io.StringIO()):
        train(load_config(root / "config.yaml"), quiet=True)
    stores = [str(root / "stores" / f"g{i}.zarr") for i in (4, 5)]
    roots = {s: (Path(s) / "zarr.json").read_bytes() for s in stores}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        preds = predict(
            root / "run" / "checkpoints" / "best.pt",
            stores,
            root / "pred.csv",
            root / "hm",
            ordinal=True,
        )
    return {
        "root": root,
        "ck": root / "run" / "checkpoints" / "best.pt",
        "stores": stores,
        "roots": roots,
        "preds": preds,
        "log": err.getvalue(),
    }


def _heat(graded: dict[str, Any], i: int) -> tuple[np.ndarray, np.ndarray]:
    """The contributions and probabilities of store i computed afresh (not from the outputs)."""
    state = load_checkpoint(graded["ck"])
    cfg = config_from_checkpoint(state)
    rows = [ManifestRow(Path(s).stem, s, 0, 0) for s in graded["stores"]]
    cfg.data.train_folds, cfg.data.val_folds = [0], []
    setup = build(cfg, log=lambda *a: None, manifest_rows=rows, check_stores=False)
    setup.model.load_state_dict(state["model"])
    return latent_contributions(setup, i)


def test_csv_has_probabilities_prediction_and_expected_grade(graded: dict[str, Any]) -> None:
    assert "warning" not in graded["log"], graded["log"]
    assert {p.name for p in (graded["root"] / "hm").iterdir()} == {
        "heatmap-g4.png",
        "heatmap-g5.png",
        "g4.geojson",
        "g5.geojson",
    }
    with open(graded["root"] / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", "store", "pred"] + [f"prob_{k}" for k in range(K)] + [
        "expected_grade"
    ]
    assert [r["slide_id"] for r in rows] == ["g4", "g5"]
    for r in rows:
        p = np.array([float(r[f"prob_{k}"]) for k in range(K)])
        assert p.min() >= 0 and abs(p.sum() - 1) < 1e-4
        assert int(r["pred"]) == int(p.argmax())
        grade = float(r["expected_grade"])
        assert 0 <= grade <= K - 1
        assert grade == pytest.approx(float((np.arange(K) * p).sum()), abs=1e-4)
    # without --ordinal (and no model.ordinal in the config): no expected grade
    out = graded["root"] / "plain.csv"
    predict(graded["ck"], graded["stores"][:1], out)
    assert out.read_text().splitlines()[0] == "slide_id,store,pred,prob_0,prob_1,prob_2"


def test_geojson_is_valid_qupath_tiles_at_level0(graded: dict[str, Any]) -> None:
    for i, url in enumerate(graded["stores"]):
        store = SlideStore(url)
        h0, w0 = store.level_shape(0)
        contrib, probs = _heat(graded, i)
        pred = int(np.argmax(probs))
        assert pred == graded["preds"][i]["pred"]
        heat = contrib[pred]
        text = (graded["root"] / "hm" / f"{Path(url).stem}.geojson").read_text()
        fc = geojson.loads(text)
        assert fc.is_valid and fc["type"] == "FeatureCollection"
        feats = fc["features"]
        scored = np.isfinite(heat)
        assert len(feats) == scored.sum() > 0  # one feature per scored (tissue) patch
        fractions = store.patch_fractions(LEVEL)
        seen = set()
        for f in feats:
            geom = shapely.geometry.shape(f["geometry"])
            assert geom.is_valid and geom.geom_type == "Polygon"
            ring = f["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) == 5
            xs, ys = [pt[0] for pt in ring], [pt[1] for pt in ring]
            assert 0 <= min(xs) < max(xs) <= w0 and 0 <= min(ys) < max(ys) <= h0
            props = f["properties"]
            m = props["measurements"]
            r, c = int(m["Grid row"]), int(m["Grid column"])
            seen.add((r, c))
            ext = PATCH * 2  # level 1: downsample 2
            assert geom.bounds == (c * ext, r * ext, min((c + 1) * ext, w0), min((r + 1) * ext, h0))
            assert m["Contribution"] == pytest.approx(heat[r, c], rel=1e-5, abs=1e-7)
            for k in range(K):
                assert m[f"Contribution class {k}"] == pytest.approx(
                    contrib[k, r, c], rel=1e-5, abs=1e-7
                )
            assert m["Tissue fraction"] == pytest.approx(fractions[r, c], abs=1e-6)
            assert props["objectType"] == "tile"
            want = "Positive" if heat[r, c] > 0 else "Negative"
            assert props["classification"]["name"] == want
            assert len(props["classification"]["color"]) == 3
        assert seen == {(int(r), int(c)) for r, c in zip(*np.nonzero(scored), strict=True)}


def test_store_layer_opens_in_ome_zarr_and_lies_over_the_patches(graded: dict[str, Any]) -> None:
    for i, url in enumerate(graded["stores"]):
        contrib, probs = _heat(graded, i)
        heat = contrib[int(np.argmax(probs))]
        root_nodes = list(Reader(parse_url(url))())
        image = root_nodes[0]
        base = image.metadata["coordinateTransformations"][0][0]["scale"][-1]  # level-0 pixel
        label = next(n for n in root_nodes if n.metadata.get("name") == "patchgd")
        layer = list(Reader(parse_url(f"{url}/heatmaps/patchgd"))())[0]
        for node in (label, layer):
            scale, trans = node.metadata["coordinateTransformations"][0]
            assert scale["type"] == "scale" and trans["type"] == "translation"
            # one layer pixel = one patch = P x downsample level-0 pixels, centres aligned
            assert np.allclose(np.array(scale["scale"]) / base, PATCH * 2)
            assert np.allclose(np.array(trans["translation"]) / base, (PATCH * 2 - 1) / 2)
        values = np.asarray(layer.data[0])
        assert values.dtype == np.float32 and values.shape == heat.shape
        np.testing.assert_allclose(values, heat, rtol=1e-6, equal_nan=True)
        classes = np.asarray(label.data[0])
        assert set(np.unique(classes[np.isnan(heat)])) <= {0}
        np.testing.assert_array_equal(classes[heat > 0], 2)
        np.testing.assert_array_equal(classes[np.isfinite(heat) & (heat <= 0)], 1)
        # the store is as it was: same root attributes, verifies, opens, `info` reads it
        assert (Path(url) / "zarr.json").read_bytes() == graded["roots"][url]
        assert SlideStore(url).verify(deep=True) == []
        assert wp.open_store(url).level_shape(0) == (SIDE, SIDE)
    r = cli("info", graded["stores"][0])
    assert r.returncode == 0, r.stderr


def test_rerun_replaces_the_layer_cleanly(graded: dict[str, Any], tmp_path: Path) -> None:
    url = str(tmp_path / "again.zarr")
    shutil.copytree(graded["stores"][0], url)
    before = np.asarray(wp.open_store(url).group["heatmaps/patchgd/0"][:])
    for _ in range(2):
        predict(graded["ck"], [url], tmp_path / "p.csv", tmp_path / "hm")
    labels = json.loads((Path(url) / "labels" / "zarr.json").read_text())
    assert labels["attributes"]["ome"]["labels"] == ["patchgd"]
    assert sorted(p.name for p in (Path(url) / "heatmaps").iterdir()) == ["patchgd", "zarr.json"]
    assert sorted(p.name for p in (Path(url) / "labels").iterdir()) == ["patchgd", "zarr.json"]
    after = np.asarray(wp.open_store(url).group["heatmaps/patchgd/0"][:])
    np.testing.assert_allclose(after, before, rtol=1e-6, equal_nan=True)


def test_a_store_that_cannot_take_the_layer_is_a_warning(
    graded: dict[str, Any], tmp_path: Path
) -> None:
    url = str(tmp_path / "blocked.zarr")
    shutil.copytree(graded["stores"][1], url)
    shutil.rmtree(Path(url) / "heatmaps")
    shutil.rmtree(Path(url) / "labels")
    (Path(url) / "heatmaps").write_text("in the way")  # the layer's place is not writable
    store = SlideStore(url)
    layout = PatchLayout.of(store, LEVEL)
    with pytest.raises(StoreError) as exc:
        write_patch_layer(url, "patchgd", np.zeros(layout.grid_shape), layout)
    assert str(exc.value).startswith(f"{url}: cannot write the layer 'patchgd'")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        predict(graded["ck"], [url], tmp_path / "p.csv", tmp_path / "hm")
    warnings = [x for x in err.getvalue().splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "cannot write the layer" in warnings[0], err.getvalue()
    assert (tmp_path / "hm" / "blocked.geojson").is_file()
    assert (tmp_path / "hm" / "heatmap-blocked.png").is_file()
    assert not (Path(url) / "labels").exists()  # nothing half-written
    assert SlideStore(url).verify(deep=True) == []


def test_evaluate_reports_bootstrap_intervals_and_providers(graded: dict[str, Any]) -> None:
    a = evaluate_checkpoint(graded["ck"], [0, 1], resamples=300, seed=3)
    b = evaluate_checkpoint(graded["ck"], [0, 1], resamples=300, seed=3)
    assert a["n"] == 8
    for key in ("accuracy", "qwk"):
        lo, hi = a[f"{key}_ci"]
        assert lo <= a[key] <= hi and 0 <= hi - lo
        assert a[f"{key}_ci"] == b[f"{key}_ci"]  # the same under the same seed
    rows = a["groups"]["rows"]
    assert a["groups"]["column"] == "provider"
    assert [r["group"] for r in rows] == list(PROVIDERS) and sum(r["n"] for r in rows) == 8
    for r in rows:
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
    r = cli("evaluate", str(graded["ck"]), "--folds", "0,1", "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    assert "provider karolinska: 4 slides" in r.stdout and "provider radboud" in r.stdout
    assert "200 resamples, seed 0" in r.stdout


def test_bootstrap_intervals_on_known_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 120)
    noisy = np.clip(y + rng.integers(-1, 2, y.size), 0, 5)
    rep = classification_report(y, noisy, 6, resamples=500, seed=1)
    assert rep["qwk"] == pytest.approx(qwk(y, noisy, 6))
    assert rep["accuracy"] == pytest.approx(accuracy(y, noisy))
    for key in ("accuracy", "qwk"):
        lo, hi = rep[f"{key}_ci"]
        assert lo < rep[key] < hi and hi - lo < 0.3
    assert classification_report(y, noisy, 6, resamples=500, seed=1) == rep
    assert classification_report(y, noisy, 6, resamples=500, seed=2) != rep
    perfect = bootstrap_intervals(y, y, {"acc": accuracy}, resamples=50)
    assert perfect["acc"] == (1.0, 1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_intervals(y, y, {"acc": accuracy}, resamples=0)
