"""A small labelled slide set built by the tests: PNG canvases of H&E-coloured texture on glass,
class 1 with a few small dark 'tumour' spots, converted into stores through the real CLI path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_patchgd.data.manifest import ManifestRow, write_manifest
from wsi_patchgd.store import ConvertOptions, convert_many


def canvas(rng: np.random.Generator, label: int, side: int = 128) -> np.ndarray:
    img = np.full((side, side, 3), 245, np.uint8)
    y0, x0 = rng.integers(0, side // 4, 2)
    h, w = rng.integers(side // 2, side - side // 4, 2)
    pink = np.array([230, 150, 190]) + rng.integers(-20, 20, (h, w, 3))
    img[y0 : y0 + h, x0 : x0 + w] = np.clip(pink, 0, 255)
    if label == 1:
        for _ in range(2):
            cy, cx = rng.integers(y0 + 4, y0 + h - 12), rng.integers(x0 + 4, x0 + w - 12)
            img[cy : cy + 8, cx : cx + 8] = [70, 30, 110]
    return img


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    pngs, rows = [], []
    for i in range(8):
        label = i % 2
        p = root / "png" / f"s{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(canvas(rng, label)).save(p)
        pngs.append(str(p))
        rows.append(ManifestRow(f"s{i:02d}", f"stores/s{i:02d}.zarr", label, 0 if i < 6 else 1))
    res = convert_many(
        pngs,
        str(root / "stores"),
        ConvertOptions(patch_size=32, shard_patches=4, min_level_size=64),
        workers=2,
        quiet=True,
    )
    assert all(r.status == "ok" for r in res), res
    write_manifest(str(root / "manifest.csv"), rows)
    (root / "config.yaml").write_text(
        "data:\n  manifest: manifest.csv\n  train_folds: [0]\n  val_folds: [1]\n"
        "  tissue_threshold: 0.2\n"
        "model:\n  backbone: mobilenet_v3_small\n  num_classes: 2\n  latent_dim: 32\n"
        "  head_channels: 32\n  head_convs: 2\n  dropout: 0.1\n"
        "patchgd:\n  sampling_fraction: 0.25\n  fill_batch_size: 64\n  gd_image_size: 64\n"
        "optim:\n  lr: 0.001\n"
        "schedule:\n  epochs: 3\n  batch_size: 4\n  warmup_epochs: 1\n"
        "output:\n  dir: runs/tiny\n  heatmaps: 2\n"
        "seed: 0\n"
    )
    return root
