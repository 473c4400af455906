"""The UltraMNIST PatchGD-vs-GD experiment runner, end to end on a tiny setting (--quick)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_experiment_runner_quick(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "exp"
    r = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "experiment_ultramnist.py"), "--quick",
         "--reference", "--out", str(out), "-q", "--mnist-dir", str(data_dir / "mnist")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    pg, gd = res["runs"]["patchgd"], res["runs"]["gd"]
    budget_mb = res["budget_bytes"] / 1e6
    # one budget for both; under it GD had to shrink the 128 px canvases, PatchGD did not
    assert f"memory budget {budget_mb:.0f}MB" in r.stdout + r.stderr
    assert pg["method"] == "patchgd" and pg["k"] == 4
    assert gd["method"] == "gd" and 32 <= gd["gd_image_size"] < 128
    for s in (pg, gd):
        assert 0.0 <= s["val_accuracy"] <= 1.0 and s["epochs"] == 1
    table = (out / "results.md").read_text()
    assert "| PatchGD | 128 px (full)" in table
    assert f"| GD | {gd['gd_image_size']} px (resized to fit the budget)" in table
    ref = res["runs"]["gd-full"]  # the reference: GD at full resolution, over the budget
    assert ref["gd_image_size"] == 128 and ref["step_bytes"] > res["budget_bytes"]
    assert "| GD, no budget (reference) | 128 px (full" in table
    assert (out / "comparison.png").stat().st_size > 10_000
    # both started from the same digit-taught weights
    assert res["init"] == "digits" and (out / "pretrained-digits.pt").exists()
    assert 0.0 <= res["pretrain"]["val_digit_accuracy"] <= 1.0
    for m in ("patchgd", "gd"):
        cfg = (out / "runs" / m / "config.yaml").read_text()
        assert "pretrained-digits.pt" in cfg
