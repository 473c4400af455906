"""The store-backed patch source and manifests, driven by the real engine on real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import CMU, KIDNEY
from wsi_patchgd.data import StorePatchSource, read_manifest
from wsi_patchgd.data.manifest import ManifestRow, write_manifest
from wsi_patchgd.engine import PatchGDModel, predict, train_batch
from wsi_patchgd.errors import ManifestError
from wsi_patchgd.models.heads import PooledHead
from wsi_patchgd.sampling import PermutationSampler
from wsi_patchgd.store import ATTR_KEY, ConvertOptions, SlideStore, convert_slide

P = 64
OPTS = ConvertOptions(patch_size=P, shard_patches=4, min_level_size=256)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[str]:
    out = tmp_path_factory.mktemp("loader")
    urls = []
    for src in (CMU, KIDNEY):
        dest = out / (src.stem + ".zarr")
        assert convert_slide(str(src), str(dest), OPTS).status == "ok"
        urls.append(str(dest))
    return urls


class TinyBackbone(nn.Module):
    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_grid_and_reads_match_the_store(stores: list[str]) -> None:
    src = StorePatchSource(stores, level=0, tissue_threshold=0.5)
    store = SlideStore(stores[0])
    grid = src.grid(0)
    assert grid.shape == store.grid_shape(0)
    np.testing.assert_array_equal(grid.tissue, store.patch_fractions(0) >= 0.5)
    idx = grid.tissue_indices()[:10]
    rows, cols = grid.coords(idx)
    got = src.read(0, idx).numpy()
    ref = store.read_regions_chw(
        0, [(int(c) * P, int(r) * P) for r, c in zip(rows, cols, strict=True)], P, P
    )
    np.testing.assert_array_equal(got, ref)


def test_prefetched_reads_equal_direct_reads(stores: list[str]) -> None:
    src = StorePatchSource(stores, level=0, lookahead=3)
    rng = np.random.default_rng(0)
    reqs = [(i % 2, rng.choice(src.grid(i % 2).n_patches, 5, replace=False)) for i in range(8)]
    src.prefetch(reqs)
    direct = StorePatchSource(stores, level=0)
    for image, idx in reqs:
        torch.testing.assert_close(src.read(image, idx), direct.read(image, idx))


def test_storage_order_walks_shard_by_shard(stores: list[str]) -> None:
    src = StorePatchSource(stores, level=0)
    g = src.grid(0)
    order = src.storage_order(0, np.arange(g.n_patches))
    rows, cols = g.coords(order)
    shard = (rows // 4) * 1000 + cols // 4
    assert (np.diff(shard) != 0).sum() == len(np.unique(shard)) - 1  # each shard visited once
    assert sorted(order.tolist()) == list(range(g.n_patches))


def test_engine_never_reads_more_than_one_batch(stores: list[str]) -> None:
    """Train a batch and predict through the store: no read exceeds one batch of patches."""
    torch.manual_seed(0)
    src = StorePatchSource(stores, level=0, record_reads=True)
    model = PatchGDModel(TinyBackbone(), PooledHead(8, 2, channels=8, n_convs=1, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    k, fill_bs = 6, 16
    res = train_batch(
        model,
        opt,
        src,
        [0, 1],
        torch.tensor([0, 1]),
        PermutationSampler(),
        k,
        3,
        3,
        np.random.default_rng(0),
        nn.functional.cross_entropy,
        fill_bs,
    )
    assert np.isfinite(res["loss"]) and res["optimizer_steps"] == 1
    logits = predict(model, src, [0, 1], fill_bs)
    assert logits.shape == (2, 2)
    assert src.reads, "the engine read through the store"
    biggest = max(shape[0] for _, shape in src.reads)
    assert biggest <= max(k, fill_bs)
    full = [SlideStore(u).grid_shape(0) for u in stores]
    assert all(
        shape[0] < h * w
        for (_, shape), (h, w) in zip(src.reads, full * len(src.reads), strict=False)
    )
    n_tissue = src.grid(0).n_tissue + src.grid(1).n_tissue
    assert res["fill_patches"] == n_tissue


def test_manifest_validation(stores: list[str], tmp_path: Path) -> None:
    good = tmp_path / "m.csv"
    write_manifest(
        str(good), [ManifestRow("cmu", stores[0], 1, 0), ManifestRow("kidney", stores[1], 0, 1)]
    )
    rows = read_manifest(str(good), num_classes=2)
    assert [(r.slide_id, r.label, r.fold) for r in rows] == [("cmu", 1, 0), ("kidney", 0, 1)]
    with pytest.raises(ManifestError, match=r"line 3 \(kidney\): label 0 outside|label 1 outside"):
        read_manifest(str(good), num_classes=1)
    bad = tmp_path / "bad.csv"
    write_manifest(str(bad), [ManifestRow("x", str(tmp_path / "missing.zarr"), 0, 0)])
    with pytest.raises(ManifestError, match="missing.zarr is missing or not a store"):
        read_manifest(str(bad))
    (tmp_path / "cols.csv").write_text("slide,label\na,1\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(str(tmp_path / "cols.csv"))
    import shutil

    import zarr

    inc = tmp_path / "inc.zarr"
    shutil.copytree(stores[1], inc)
    g = zarr.open_group(str(inc), mode="r+")
    g.attrs[ATTR_KEY] = {**dict(g.attrs[ATTR_KEY]), "complete": False}
    write_manifest(str(bad), [ManifestRow("x", "inc.zarr", 0, 0)])  # relative to the manifest
    with pytest.raises(ManifestError, match="incomplete; rerun `wsi-patchgd convert`"):
        read_manifest(str(bad))
