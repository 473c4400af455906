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
         "--runs", "patchgd,gd,gd-time,gd-full", "--seeds", "0,1", "--out", str(out), "-q",
         "--mnist-dir", str(data_dir / "mnist")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1]
    budget_mb = res["budget_bytes"] / 1e6
    # one budget for both; under it GD had to shrink the 128 px canvases, PatchGD did not
    assert f"memory budget {budget_mb:.0f}MB" in r.stdout + r.stderr
    for seed in ("0", "1"):
        pg, gd = res["runs"]["patchgd"][seed], res["runs"]["gd"][seed]
        assert pg["method"] == "patchgd" and pg["k"] == 4
        assert gd["method"] == "gd" and 32 <= gd["gd_image_size"] < 128
        for s in (pg, gd):
            assert 0.0 <= s["val_accuracy"] <= 1.0 and s["epochs"] == 1
        # same wall-clock: GD under the budget trains at least as many epochs as PatchGD
        timed = res["runs"]["gd-time"][seed]
        assert timed["gd_image_size"] == gd["gd_image_size"] and timed["epochs"] >= 1
        ref = res["runs"]["gd-full"][seed]  # GD at full resolution, over the budget
        assert ref["gd_image_size"] == 128 and ref["step_bytes"] > res["budget_bytes"]
    # the two seeds are different runs
    a, b = (res["runs"]["patchgd"][s]["final_train_loss"] for s in ("0", "1"))
    assert a != b
    table = (out / "results.md").read_text()
    summary = res["summary"]["patchgd"]
    accs = [res["runs"]["patchgd"][s]["final_val_accuracy"] for s in ("0", "1")]
    assert abs(summary["last"][0] - sum(accs) / 2) < 1e-9  # mean over seeds
    assert (
        f"| PatchGD | 128 px (full), 32 px patches, k=4, ζ=4 | 1 | {summary['last'][0]:.3f} ±"
        in table
    )
    assert "| GD at full resolution, no budget (upper bound) | 128 px (full" in table
    assert "Command: `python pipelines/experiment_ultramnist.py --quick" in table
    assert (out / "comparison.png").stat().st_size > 10_000
    # all started from the same digit-taught weights
    assert res["init"] == "digits" and (out / "pretrained-digits.pt").exists()
    assert 0.0 <= res["pretrain"]["val_digit_accuracy"] <= 1.0
    for m in ("patchgd", "gd"):
        cfg = (out / "runs" / "seed0" / m / "config.yaml").read_text()
        assert "pretrained-digits.pt" in cfg
