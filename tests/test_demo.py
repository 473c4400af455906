"""The main job end to end, small: the real `wsi-patchgd demo` command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_patchgd.demo import run_demo
from wsi_patchgd.engine import build_gd_model
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.training.memory import plan_gd_image_size

BUDGET = "512MB"  # small enough that GD must shrink the 2048 px slides below the 512 px cap


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_patchgd",
            "demo",
            "--out",
            str(out),
            "--slides",
            "6",
            "--epochs",
            "1",
            "--memory-budget",
            BUDGET,
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in r.stdout
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in r.stderr  # a line per step in quiet mode

    # GD's side is the planner's for the budget (same probe as the trainer), capped at the
    # 512 px PatchGD sees; not a hard-coded thumbnail size
    probe = build_gd_model("resnet18", 2, 64, 128, None, 128, 2, 0.0)
    want = plan_gd_image_size(probe, 4, BUDGET, 2048 // 4)
    assert 128 < want < 512
    summary = json.loads((out / "report.json").read_text())
    assert {"patchgd", "gd"} <= set(summary)
    assert summary["memory_budget"] == BUDGET
    assert summary["gd_image_size"] == summary["gd"]["gd_image_size"] == want
    assert summary["gd_max_image_size"] == 512
    for m in ("patchgd", "gd"):
        s = summary[m]
        assert s["best_epoch"] == 0 and s["last_epoch"] == 0  # one epoch
        for key in ("val_accuracy_best", "val_accuracy_last", "train_accuracy_last"):
            assert 0.0 <= s[key] <= 1.0, (m, key)
    run_cfg = (out / "runs" / "gd" / "config.yaml").read_text()
    assert f"memory_budget: {BUDGET}" in run_cfg and "gd_image_size: 512" in run_cfg
    assert f"memory budget {BUDGET}: GD image size {want}px" in r.stderr  # the trainer's plan

    report = (out / "report.md").read_text()
    assert "| patchgd |" in report and "| gd |" in report
    assert f"**{BUDGET}**" in report and f"**{want} px**" in report
    assert "128 px" not in report
    assert f"k = {summary['patchgd']['k']}, ζ = {summary['patchgd']['zeta']}" in report
    assert "val acc (best epoch)" in report and "val acc (last epoch)" in report
    assert "train acc (last epoch)" in report
    gd_row = next(line for line in report.splitlines() if line.startswith("| gd |"))
    assert f"{want} px" in gd_row
    assert f"{summary['gd']['val_accuracy_last']:.3f} (epoch 1)" in gd_row

    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "runs" / "patchgd" / "plots").glob("heatmap-*.png"))
    conv = json.loads((out / "convert-report.json").read_text())
    assert conv["summary"]["ok"] == 6

    # re-running with another budget does not silently reuse the runs made with this one
    with pytest.raises(ConfigError, match="other settings"):
        run_demo(out, n_slides=6, epochs=1, budget="2GB", quiet=True)
