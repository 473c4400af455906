"""Runs that must not lose or corrupt anything: predict writes nothing but its CSV, a resume
with a changed config is refused before the run directory changes, a plot that fails is a
warning, unsafe slide ids are refused, a diverging run stops with one line and saves nothing."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wsi_patchgd.data.manifest import ManifestRow, read_manifest, write_manifest
from wsi_patchgd.errors import ConfigError, ManifestError
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.inference import predict_stores
from wsi_patchgd.training.trainer import train


@pytest.fixture(scope="module")
def run1(tiny_dataset: Path) -> tuple[Path, dict[str, Any], str]:
    """One epoch whose curves.png and first heat map cannot be written (folders are in the way)."""
    out = tiny_dataset / "runs" / "reliability"
    (out / "plots" / "curves.png").mkdir(parents=True)
    (out / "plots" / "heatmap-s06.png").mkdir()
    cfg = load_config(tiny_dataset / "config.yaml", [f"output.dir={out}", "schedule.epochs=1"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = train(cfg, quiet=True)
    return out, summary, err.getvalue()


def test_plot_failures_are_warnings_and_the_run_finishes(
    run1: tuple[Path, dict[str, Any], str],
) -> None:
    out, summary, log = run1
    warnings = [x for x in log.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 2, log
    assert "curves.png: plot not written" in warnings[0]
    assert "heatmap-s06.png: plot not written" in warnings[1]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    assert summary["val_accuracy"] is not None and (out / "summary.md").is_file()
    assert (out / "plots" / "heatmap-s07.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "best.pt").is_file()


def test_resume_with_a_changed_config_is_refused_untouched(
    run1: tuple[Path, dict[str, Any], str], tiny_dataset: Path
) -> None:
    out = run1[0]
    files = ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt")
    before = {f: (out / f).read_bytes() for f in files}
    changed = ["model.dropout=0.3", "patchgd.k=2", "optim.lr=0.01", "schedule.epochs=3"]
    cfg = load_config(tiny_dataset / "config.yaml", [f"output.dir={out}", *changed])
    with pytest.raises(ConfigError) as err:
        train(cfg, resume=True, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and "cannot resume with a changed config" in msg
    for key in ("model.dropout 0.1 -> 0.3", "patchgd.k None -> 2", "optim.lr 0.001 -> 0.01"):
        assert key in msg, msg
    assert "schedule.epochs" not in msg.split("(", 1)[1].split(";")[0]  # growing is allowed
    assert {f: (out / f).read_bytes() for f in files} == before


def test_resume_may_grow_epochs_and_change_resources(
    run1: tuple[Path, dict[str, Any], str], tiny_dataset: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run1[0], copy)
    ovs = [f"output.dir={copy}", "schedule.epochs=2", "output.heatmaps=0", "device=cpu"]
    cfg = load_config(tiny_dataset / "config.yaml", ovs)
    with contextlib.redirect_stderr(io.StringIO()):
        s = train(cfg, resume=True, quiet=True)
    assert s["epochs"] == 2
    assert "epochs: 2" in (copy / "config.yaml").read_text()


def test_predict_writes_only_its_csv_and_keeps_relative_stores(
    run1: tuple[Path, dict[str, Any], str],
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mine = out_dir / "pred.manifest.csv"  # the name the old temporary manifest took
    mine.write_text("slide_id,store,label\nmine,elsewhere.zarr,0\n")
    monkeypatch.chdir(tiny_dataset)  # relative stores: relative to the working directory
    stores = ["stores/s06.zarr", "stores/s07.zarr/"]
    preds = predict_stores(run1[0] / "checkpoints" / "best.pt", stores, out_dir / "pred.csv")
    assert [p["slide_id"] for p in preds] == ["s06", "s07"]
    assert mine.read_text() == "slide_id,store,label\nmine,elsewhere.zarr,0\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["pred.csv", "pred.manifest.csv"]
    with open(out_dir / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["store"] for r in rows] == stores
    assert all(abs(float(r["prob_0"]) + float(r["prob_1"]) - 1) < 1e-3 for r in rows)


@pytest.mark.parametrize("bad", ["a/b", "x\\y", "c:d", "..", "tab\there"])
def test_slide_ids_that_cannot_name_a_file_are_refused(
    tiny_dataset: Path, tmp_path: Path, bad: str
) -> None:
    rows = read_manifest(str(tiny_dataset / "manifest.csv"), check_stores=False)
    rows[1] = ManifestRow(bad, rows[1].store, rows[1].label, rows[1].fold)
    write_manifest(str(tmp_path / "m.csv"), rows)
    with pytest.raises(ManifestError) as err:
        read_manifest(str(tmp_path / "m.csv"), 2)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'm.csv'} line 3: slide_id {bad!r}") and "\n" not in msg


def test_divergence_stops_with_one_line_and_saves_nothing(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "div"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_patchgd",
            "train",
            str(tiny_dataset / "config.yaml"),
            "optim.lr=1e30",
            f"output.dir={out}",
            "schedule.epochs=2",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "training diverged" in errors[0] and "at epoch 1, batch" in errors[0]
    assert "lower optim.lr (now 1e+30)" in errors[0]
    assert not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()
