"""The device benchmark's CPU smoke run: ``bench_device.py --quick --device cpu`` for real.

It runs the real engine (PatchGD and GD steps of mobilenet_v2) on in-memory images and the real
read path on a Zarr store it converts from a generated slide, measuring the CPU's peak RSS; the
same driver measures ``torch.cuda.max_memory_allocated`` on a GPU (``benchmarks/device.sh``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_device.py"
QUICK_SIDES = [128, 256, 512]
MB = 1e6


def _run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """(the result document, its path, the printed report) of one quick CPU run."""
    tmp = tmp_path_factory.mktemp("bench_device")
    path = tmp / "quick.json"
    proc = _run(["--quick", "--device", "cpu", "--json", str(path), "--workdir", str(tmp)])
    return json.loads(path.read_text()), path, proc.stdout


def _numbers(obj: Any, where: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with its path."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [(where, float(obj))]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [n for i, v in enumerate(obj) for n in _numbers(v, f"{where}[{i}]")]
    return []


def _row(doc: dict[str, Any], method: str, side: int) -> dict[str, Any]:
    (row,) = [r for r in doc["sweep"]["rows"] if (r["method"], r["side"]) == (method, side)]
    return row


def test_quick_run_structure(quick: tuple[dict[str, Any], Path, str]) -> None:
    doc, _, out = quick
    assert doc["benchmark"] == "bench_device"
    assert doc["torch"]["device"] == "cpu" and doc["torch"]["torch"]
    assert doc["machine"]["cores_logical"] >= 1
    assert doc["settings"]["dtypes"] == ["fp32"] and doc["settings"]["sizes"] == QUICK_SIDES
    assert doc["malloc_threshold_fixed"] is True
    assert not doc.get("failed_parts")
    sweep = doc["sweep"]
    assert sweep["complete"] and "VmHWM" in sweep["memory_metric"]
    assert len(sweep["rows"]) == 2 * len(QUICK_SIDES)
    for row in sweep["rows"]:
        assert row["status"] == "ok", row
        assert row["dtype"] == "fp32"
        for key in ("peak_bytes", "first_step_s", "step_s", "wall_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
        if row["method"] == "patchgd":
            assert row["patches_per_s"] > 0 and row["patches_per_step"] > 0
    thr = doc["throughput"]
    for key in ("random_k", "random_k_prefetch", "fill_order"):
        assert thr["loader"]["loader_patches_per_s"][key] > 0
    assert set(thr["backbone_patches_per_s"]) == {"fp32"}
    assert thr["backbone_patches_per_s"]["fp32"]["grad_k"] > 0
    assert thr["loader"]["convert"]["status"] == "ok"
    numbers = _numbers({k: doc[k] for k in ("sweep", "throughput")})
    assert numbers and all(math.isfinite(v) for _, v in numbers)
    assert all(v >= 0 for w, v in numbers if "slope" not in w), numbers
    assert "PatchGD MB" in out and "loader patches/s" in out


def test_gd_memory_grows_patchgd_stays_flat(quick: tuple[dict[str, Any], Path, str]) -> None:
    doc, _, _ = quick
    small, large = QUICK_SIDES[0], QUICK_SIDES[-1]  # 16x the pixels
    gd = [_row(doc, "gd", s)["peak_bytes"] for s in QUICK_SIDES]
    pg = [_row(doc, "patchgd", s)["peak_bytes"] for s in QUICK_SIDES]
    assert gd == sorted(gd), gd
    assert gd[-1] > 3 * gd[0], gd
    assert pg[-1] < 1.5 * pg[0] + 10 * MB, pg
    assert _row(doc, "gd", large)["peak_bytes"] > 3 * _row(doc, "patchgd", large)["peak_bytes"]
    slopes = {g["method"]: g["log_log_slope"] for g in doc["sweep"]["growth"]}
    assert slopes["gd"] > 0.8 and abs(slopes["patchgd"]) < 0.3, slopes
    assert _row(doc, "patchgd", small)["grid"] == [4, 4]


def test_table_of_a_saved_result(quick: tuple[dict[str, Any], Path, str]) -> None:
    _, path, _ = quick
    out = _run(["--table", str(path)], timeout=60).stdout
    assert "GD/PatchGD" in out and "512" in out and "loader/backbone" in out


def test_step_that_does_not_fit_is_oom(tmp_path: Path) -> None:
    """Under a 0.3 GB cap GD's 512 px step fails and is recorded as OOM; PatchGD's fits."""
    path = tmp_path / "oom.json"
    args = ["--quick", "--device", "cpu", "--parts", "sweep", "--sizes", "128,512"]
    args += ["--mem-limit-gb", "0.3", "--repeats", "0", "--json", str(path)]
    _run(args + ["--workdir", str(tmp_path)])
    doc = json.loads(path.read_text())
    assert "throughput" not in doc
    gd, pg = _row(doc, "gd", 512), _row(doc, "patchgd", 512)
    assert gd["status"] == "OOM" and "allocate" in gd["reason"], gd
    assert pg["status"] == "ok" and pg["peak_bytes"] < 0.3e9, pg
    assert _row(doc, "gd", 128)["status"] == "ok"
