"""Training throughput of 1 vs N processes under torchrun (CPU: gloo; GPU: nccl), same run.

Builds a small slide set (H&E-coloured canvases converted into stores), then trains the same
PatchGD config with ``torchrun --nproc_per_node P -m wsi_patchgd train`` for each P, and reports
images/s of the last epoch (warm: the first epoch pays the imports and the first reads), with
1 process as the baseline. On a CPU machine each process gets cores/P threads, so the ratio
says what DDP costs or gains on that machine (communication vs thread scaling), not what more
machines would give.

    python benchmarks/bench_distributed.py [--procs 1,2] [--slides 16] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_patchgd.data.manifest import ManifestRow, write_manifest
from wsi_patchgd.store import ConvertOptions, convert_many

CONFIG = """data:
  manifest: manifest.csv
  train_folds: [0]
  val_folds: [1]
  tissue_threshold: 0.2
model: {backbone: mobilenet_v3_small, num_classes: 2, latent_dim: 64, head_channels: 64,
        head_convs: 2, dropout: 0.0}
patchgd: {sampling_fraction: 0.25, fill_batch_size: 64, norm: group}
schedule: {epochs: EPOCHS, batch_size: BATCH, warmup_epochs: 0}
output: {dir: runs/x, heatmaps: 0}
"""


def canvas(rng: np.random.Generator, label: int, side: int) -> np.ndarray:
    img = np.full((side, side, 3), 245, np.uint8)
    h, w = rng.integers(side // 2, side - side // 8, 2)
    y0, x0 = rng.integers(0, side - h), rng.integers(0, side - w)
    pink = np.array([230, 150, 190]) + rng.integers(-25, 25, (h, w, 3))
    img[y0 : y0 + h, x0 : x0 + w] = np.clip(pink, 0, 255)
    for _ in range(3 * label):
        cy, cx = rng.integers(y0, y0 + h - 10), rng.integers(x0, x0 + w - 10)
        img[cy : cy + 10, cx : cx + 10] = [70, 30, 110]
    return img


def make_data(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    pngs, rows = [], []
    for i in range(n + 2):
        p = root / "png" / f"s{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas(rng, i % 2, side)).save(p)
        pngs.append(str(p))
        rows.append(ManifestRow(f"s{i:03d}", f"stores/s{i:03d}.zarr", i % 2, 0 if i < n else 1))
    opts = ConvertOptions(patch_size=64, shard_patches=4, min_level_size=128)
    res = convert_many(pngs, str(root / "stores"), opts, workers=2, quiet=True)
    assert all(r.status == "ok" for r in res), [r.reason for r in res if r.status != "ok"]
    write_manifest(str(root / "manifest.csv"), rows)


def run(root: Path, procs: int, epochs: int, batch: int) -> dict:
    out = f"runs/p{procs}"
    (root / "config.yaml").write_text(
        CONFIG.replace("EPOCHS", str(epochs)).replace("BATCH", str(batch))
    )
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", "-m", "wsi_patchgd", "train", "config.yaml",
           f"output.dir={out}", "-q"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"torchrun with {procs} processes failed:\n{res.stdout[-2000:]}")
    recs = [json.loads(x) for x in (root / out / "metrics.jsonl").read_text().splitlines()]
    n_train = sum(1 for _ in (root / "png").iterdir()) - 2
    last = recs[-1]
    return {
        "processes": procs,
        "threads_per_process": threads,
        "epoch_seconds": last["seconds"],
        "images_per_s": n_train / last["seconds"],
        "final_train_loss": last["train_loss"],
        "wall_seconds": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", default="1,2", help="process counts to compare (first: baseline)")
    ap.add_argument("--slides", type=int, default=16, help="training slides")
    ap.add_argument("--side", type=int, default=512, help="slide side in pixels (64 px patches)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="global batch (slides)")
    ap.add_argument("--out", default="benchmarks/results/distributed.json")
    a = ap.parse_args()
    procs = [int(p) for p in a.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, a.slides, a.side)
        rows = [run(root, p, a.epochs, a.batch) for p in procs]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    print(f"\nPatchGD training, {a.slides} slides of {a.side}^2 px, 64 px patches, "
          f"mobilenet_v3_small, batch {a.batch}, {machine}")  # fmt: skip
    print("| processes | threads each | images/s (last epoch) | vs 1st | final loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_s']:.2f} | "
              f"{r['speedup']:.2f}x | {r['final_train_loss']:.4f} |")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "results": rows}, indent=2))
    print(f"JSON: {a.out}")


if __name__ == "__main__":
    main()
