"""End-to-end: the real CLI in a subprocess on real files, bad inputs and a SIGKILL mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import BROKEN, CMU, KIDNEY, TCGA
from wsi_patchgd.errors import StoreIncompleteError
from wsi_patchgd.store import ATTR_KEY, SlideStore


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsi_patchgd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_inputs_each_one_line_others_convert(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = bad / "truncated.svs"
    truncated.write_bytes(CMU.read_bytes()[: CMU.stat().st_size * 6 // 10])
    empty = bad / "empty.svs"
    empty.write_bytes(b"")
    text = bad / "notes.svs"
    text.write_text("this is not a slide\n")
    missing = bad / "missing.svs"
    folder = bad / "folder"
    folder.mkdir()
    inputs = [
        str(BROKEN),
        str(truncated),
        str(empty),
        str(text),
        str(missing),
        str(folder),
        str(KIDNEY),
    ]
    report = tmp_path / "report.json"
    r = cli(
        "convert",
        *inputs,
        "--out",
        str(tmp_path / "out"),
        "--report",
        str(report),
        "-q",
        "--workers",
        "2",
    )
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 6, r.stderr
    for path, why in [
        (BROKEN, "unsupported or corrupt"),
        (truncated, "truncated"),
        (empty, "empty file"),
        (text, "unsupported or corrupt"),
        (missing, "no such file"),
        (folder, "is a directory"),
    ]:
        line = next((ln for ln in errors if f"{path}:" in ln), None)
        assert line is not None and why in line, (path, r.stderr)
    doc = json.loads(report.read_text())
    statuses = {s["source"]: s["status"] for s in doc["slides"]}
    assert statuses == {**{i: "failed" for i in inputs[:-1]}, str(KIDNEY): "ok"}
    assert SlideStore(str(tmp_path / "out" / "kidney-48-5.zarr")).complete
    # the same job again: the good slide is skipped, the bad ones fail again
    r2 = cli("convert", *inputs, "--out", str(tmp_path / "out"), "--report", str(report), "-q")
    assert r2.returncode == 1
    doc = json.loads(report.read_text())
    assert {s["source"]: s["status"] for s in doc["slides"]}[str(KIDNEY)] == "skipped"
    assert doc["summary"]["skipped"] == 1 and doc["summary"]["failed"] == 6


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path: Path, data_dir: Path) -> None:
    # small shards so that the job takes long enough to be killed half-way
    args = ["--patch-size", "64", "--shard-patches", "2", "--workers", "2", "-q"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsi_patchgd", "convert", str(TCGA), "--out", str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = out / "tcga-cr-7395-01a-01-ts1.zarr" / ".progress" / "0"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.is_dir() and len(os.listdir(progress)) >= 100:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = out / "tcga-cr-7395-01a-01-ts1.zarr"
    meta = json.loads((store / "zarr.json").read_text())["attributes"][ATTR_KEY]
    assert meta["complete"] is False
    with pytest.raises(StoreIncompleteError):
        SlideStore(str(store))
    r = cli("convert", str(TCGA), "--out", str(out), *args, "--report", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["slides"][0]["resumed"] is True
    ref_out = tmp_path / "uninterrupted"
    assert cli("convert", str(TCGA), "--out", str(ref_out), *args).returncode == 0
    a = zarr.open_group(str(store), mode="r")
    b = zarr.open_group(str(ref_out / store.name), mode="r")
    names = sorted(k for k, _ in b.arrays())
    assert names == sorted(k for k, _ in a.arrays()) and len(names) >= 4
    for k in names:
        np.testing.assert_array_equal(a[k][:], b[k][:], err_msg=k)
    np.testing.assert_array_equal(a["tissue/mask"][:], b["tissue/mask"][:])


def test_info_on_slide_store_and_bad_file(tmp_path: Path, data_dir: Path) -> None:
    r = cli("info", str(CMU))
    assert r.returncode == 0, r.stderr
    assert "aperio" in r.stdout and "0.499 um/px" in r.stdout and "20x" in r.stdout
    assert "0: 2220 x 2967" in r.stdout and "tissue fraction: 0." in r.stdout
    assert cli("convert", str(CMU), "--out", str(tmp_path), "-q").returncode == 0
    r = cli("info", str(tmp_path / "cmu-1-small-region.zarr"), "--json")
    d = json.loads(r.stdout)
    assert d["reader"] == "store" and d["mpp"] == 0.499 and len(d["levels"]) >= 3
    assert 0 < d["tissue_fraction"] < 1
    r = cli("info", str(BROKEN))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(BROKEN) in r.stderr
