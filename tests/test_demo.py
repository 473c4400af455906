"""The main job end to end, small: the real `wsi-patchgd demo` command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
    report = (out / "report.md").read_text()
    assert "| patchgd |" in report and "| gd |" in report
    summary = json.loads((out / "report.json").read_text())
    assert set(summary) == {"patchgd", "gd"}
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "runs" / "patchgd" / "plots").glob("heatmap-*.png"))
    conv = json.loads((out / "convert-report.json").read_text())
    assert conv["summary"]["ok"] == 6
