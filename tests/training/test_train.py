"""Training end to end through the real CLI: run directory, resume after SIGKILL, evaluate,
predict, the GD baseline, config and memory-budget errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import cli
from wsi_patchgd.errors import ConfigError, MemoryBudgetError
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.trainer import train


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path) -> Path:
    r = cli("train", str(tiny_dataset / "config.yaml"), "output.dir=runs/full", "-q")
    assert r.returncode == 0, r.stderr
    return tiny_dataset / "runs" / "full"


def test_run_directory(trained: Path) -> None:
    assert (trained / "config.yaml").is_file()
    recs = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    for r in recs:
        for key in (
            "train_loss",
            "train_accuracy",
            "train_qwk",
            "val_loss",
            "val_accuracy",
            "val_qwk",
        ):
            assert r[key] is not None and r[key] == r[key], key
        # the epoch's training reads: local stores make no object-store requests
        assert r["io_patches_read"] > 0 and r["io_requests"] == 0 == r["io_bytes_fetched"]
    st = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng"} <= st.keys()
    assert st["epoch"] == 2 and {"torch", "torch_ranks"} <= st["rng"].keys()
    for png in ("curves.png", "heatmap-s06.png", "heatmap-s07.png"):
        data = (trained / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["method"] == "patchgd" and summary["epochs"] == 3
    assert len(summary["predictions"]) == 2
    assert "| epoch |" in (trained / "summary.md").read_text()


def test_resume_after_kill_equals_uninterrupted(trained: Path, tiny_dataset: Path) -> None:
    out = tiny_dataset / "runs" / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsi_patchgd",
            "train",
            str(tiny_dataset / "config.yaml"),
            "output.dir=runs/killed",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] < 2
    r = cli("train", str(tiny_dataset / "config.yaml"), "output.dir=runs/killed", "--resume", "-q")
    assert r.returncode == 0, r.stderr
    a = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    ma = (trained / "metrics.jsonl").read_text().splitlines()
    mb = (out / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in ma]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in mb]


def test_evaluate_and_predict(trained: Path, tiny_dataset: Path) -> None:
    r = cli("evaluate", str(trained), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    summary = json.loads((trained / "summary.json").read_text())
    assert res["accuracy"] == pytest.approx(summary["val_accuracy"])
    stores = [str(tiny_dataset / "stores" / f"s{i:02d}.zarr") for i in (6, 7)]
    out = tiny_dataset / "pred.csv"
    r = cli(
        "predict",
        "--checkpoint",
        str(trained / "checkpoints" / "best.pt"),
        *stores,
        "--out",
        str(out),
        "--heatmaps",
        str(tiny_dataset / "hm"),
    )
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "slide_id,store,pred,prob_0,prob_1" and len(lines) == 3
    assert {p.name for p in (tiny_dataset / "hm").iterdir()} == {
        "heatmap-s06.png",
        "heatmap-s07.png",
        "s06.geojson",
        "s07.geojson",
    }


def test_gd_baseline_trains(tiny_dataset: Path) -> None:
    cfg = load_config(
        tiny_dataset / "config.yaml",
        ["patchgd.method=gd", "output.dir=runs/gd", "schedule.epochs=1"],
    )
    s = train(cfg, quiet=True)
    assert s["method"] == "gd" and s["val_accuracy"] is not None


def test_config_errors(tiny_dataset: Path) -> None:
    c = str(tiny_dataset / "config.yaml")
    r = cli("train", c, "optim.lrr=0.1")
    assert r.returncode == 2 and "'optim.lrr' is unknown; did you mean 'optim.lr'" in r.stderr
    r = cli("train", c, "model.num_classes=1", "output.dir=runs/e1")
    assert r.returncode == 2 and "label 1 outside the classes 0..0" in r.stderr
    r = cli("train", c, "output.dir=runs/e2", "--memory-budget", "5MB")
    assert r.returncode == 2 and "too small for k=1" in r.stderr
    r = cli("train", c, "output.dir=runs/full")  # exists already (module fixture ran first)
    with pytest.raises(ConfigError, match="unknown"):
        load_config(c, ["schedule.epoch=1"])


def test_memory_budget_picks_k(tiny_dataset: Path) -> None:
    from wsi_patchgd.training.build import build

    cfg = load_config(
        tiny_dataset / "config.yaml",
        ["patchgd.memory_budget=150MB", "patchgd.sampling_fraction=1.0"],
    )
    logs: list[str] = []
    s = build(cfg, log=logs.append)
    assert s.memory is not None and 1 <= s.k <= s.memory.k
    assert any("k=" in x for x in logs)
    with pytest.raises(MemoryBudgetError):
        build(load_config(tiny_dataset / "config.yaml", ["patchgd.memory_budget=1MB"]))


def test_memory_budget_downscales_gd(tiny_dataset: Path) -> None:
    """GD under a budget gets the largest side whose step fits; PatchGD's k=1 need is met by a
    budget far below GD at full resolution."""
    from wsi_patchgd.engine import build_gd_model
    from wsi_patchgd.training.build import build
    from wsi_patchgd.training.memory import gd_step_bytes, plan_gd_image_size

    model = build_gd_model("mobilenet_v2", 2, 64, 32, None, 32, 2, 0.0)
    need = [gd_step_bytes(model, s, 4) for s in (32, 64, 128, 256)]
    assert need == sorted(need) and need[3] - need[2] > 3 * (need[2] - need[1]) * 0.9
    assert plan_gd_image_size(model, 4, need[2], 512) == 128
    assert plan_gd_image_size(model, 4, need[2] - 1, 512) == 96
    assert plan_gd_image_size(model, 4, 10**12, 200) == 200  # never above the image
    with pytest.raises(MemoryBudgetError, match="too small for standard GD"):
        plan_gd_image_size(model, 4, need[0] - 1, 512)

    cfg = load_config(tiny_dataset / "config.yaml", ["patchgd.method=gd"])
    probe = build_gd_model("mobilenet_v3_small", 2, 64, 32, None, 32, 2, 0.0)  # the config's model
    budget = gd_step_bytes(probe, 64, cfg.schedule.batch_size)
    cfg = load_config(
        tiny_dataset / "config.yaml",
        ["patchgd.method=gd", "patchgd.gd_image_size=128", f"patchgd.memory_budget={budget}B"],
    )
    logs: list[str] = []
    s = build(cfg, log=logs.append)
    side = s.cfg.patchgd.gd_image_size
    assert side == 64 and cfg.patchgd.gd_image_size == 128  # the caller's config untouched
    assert any(f"GD image size {side}px" in x for x in logs)


def test_one_epoch_from_s3_stores(
    tiny_dataset: Path, s3_bucket: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Stores served by moto_server on 127.0.0.1, read through s3fs: one epoch trains."""
    import s3fs

    from wsi_patchgd.data.manifest import ManifestRow, read_manifest, write_manifest

    bucket, so = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    local = read_manifest(str(tiny_dataset / "manifest.csv"), check_stores=False)
    rows = []
    for r in local:
        fs.put(r.store, f"{bucket}/stores/{Path(r.store).name}", recursive=True)
        rows.append(
            ManifestRow(r.slide_id, f"{bucket}/stores/{Path(r.store).name}", r.label, r.fold)
        )
    write_manifest(str(tmp_path / "s3.csv"), rows)
    cfg = load_config(
        tiny_dataset / "config.yaml",
        [
            f"data.manifest={tmp_path / 's3.csv'}",
            f"output.dir={tmp_path / 'run'}",
            "schedule.epochs=1",
            "output.heatmaps=0",
            "data.storage_options=" + json.dumps(so),
        ],
    )
    s = train(cfg, quiet=True)
    assert s["epochs"] == 1 and s["val_accuracy"] is not None
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["io_patches_read"] > 0 and rec["io_requests"] > 0 and rec["io_bytes_fetched"] > 0
