"""Stores on gs://, end to end, against a real GCS emulator (fake-gcs-server) on 127.0.0.1:
convert a real slide into gs://, read its patches through StorePatchSource, train one epoch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU
from tests.training.conftest import tiny_dataset  # noqa: F401 - the fixture
from wsi_patchgd import convert
from wsi_patchgd.data import StorePatchSource
from wsi_patchgd.errors import WsiPatchGDError
from wsi_patchgd.io import filesystem
from wsi_patchgd.store import SlideStore
from wsi_patchgd.store.remote import StreamOptions
from wsi_patchgd.testing import gcs_emulator

BUCKET = "wsi-test"


@pytest.fixture(scope="module")
def gcs() -> Iterator[dict[str, str]]:
    """fake-gcs-server on 127.0.0.1 with one bucket; yields gcsfs storage options."""
    try:
        with gcs_emulator(BUCKET) as opts:
            yield opts
    except WsiPatchGDError as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize("backend", ["fsspec", "obstore"])
def test_convert_into_gs_and_read_patches(
    gcs: dict[str, str], tmp_path: Path, data_dir: Path, backend: str
) -> None:
    out = f"gs://{BUCKET}/{backend}"
    res = convert(str(CMU), out, storage_options=gcs, patch_size=128, shard_patches=4,
                  min_level_size=256, workers=1)  # fmt: skip
    assert [r.status for r in res] == ["ok"], res
    res = convert(str(CMU), str(tmp_path), patch_size=128, shard_patches=4, min_level_size=256,
                  workers=1)  # fmt: skip
    url, local = f"{out}/{CMU.stem}.zarr", str(tmp_path / f"{CMU.stem}.zarr")
    assert SlideStore(url, gcs).complete
    kw = {"storage_options": gcs, "stream": StreamOptions(backend=backend),
          "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    remote, ref = StorePatchSource([url], 0, **kw), StorePatchSource([local], 0)
    grid = remote.grid(0)
    np.testing.assert_array_equal(grid.tissue, ref.grid(0).tissue)
    order = remote.storage_order(0, grid.tissue_indices())
    reads = [order[i : i + 32] for i in range(0, order.size, 32)]
    remote.take_io_stats()
    remote.prefetch([(0, r) for r in reads])
    for r in reads:
        np.testing.assert_array_equal(remote.read(0, r).numpy(), ref.read(0, r).numpy())
    io = remote.take_io_stats()
    assert io["patches_read"] == order.size and 0 < io["requests"] <= 30, io
    pick = np.random.default_rng(0).choice(grid.tissue_indices(), 20, replace=False)
    np.testing.assert_array_equal(remote.read(0, pick).numpy(), ref.read(0, pick).numpy())
    assert remote.take_io_stats()["requests"] == 0  # from the shard cache


def test_one_epoch_from_gs_stores(
    tiny_dataset: Path,  # noqa: F811 - the fixture
    gcs: dict[str, str],
    tmp_path: Path,
) -> None:
    """The tiny dataset's stores uploaded to the emulator: one epoch trains from gs://."""
    from wsi_patchgd.data.manifest import ManifestRow, read_manifest, write_manifest
    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    fs, _ = filesystem(f"gs://{BUCKET}", gcs)
    rows = []
    for r in read_manifest(str(tiny_dataset / "manifest.csv"), check_stores=False):
        dest = f"{BUCKET}/train/{Path(r.store).name}"
        fs.put(r.store, dest, recursive=True)
        rows.append(ManifestRow(r.slide_id, f"gs://{dest}", r.label, r.fold))
    write_manifest(str(tmp_path / "gs.csv"), rows)
    cfg = load_config(
        tiny_dataset / "config.yaml",
        [
            f"data.manifest={tmp_path / 'gs.csv'}",
            f"output.dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.cache_size=100MB",
            "schedule.epochs=1",
            "output.heatmaps=0",
            "data.storage_options=" + json.dumps(gcs),
        ],
    )
    s = train(cfg, quiet=True)
    assert s["epochs"] == 1 and s["val_accuracy"] is not None
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert list((tmp_path / "cache").glob("*/*.shard")), "the shards were cached"
