"""The public API: the README's Python examples run as written, on the real test slides, and
the promises of ``import wsi_patchgd as wp`` hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wsi_patchgd as wp
from tests.conftest import REPO, SLIDES
from wsi_patchgd.errors import ConfigError


def readme_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_examples_run(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    blocks = readme_examples()
    assert len(blocks) == 3
    (tmp_path / "slides").symlink_to(SLIDES)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    store = ns["store"]
    lvl = ns["level"]
    assert lvl == store.level_for_mpp(2.0) and store.level_mpp(lvl) <= 2.0 * 1.01
    h, w = store.level_shape(lvl)
    assert ns["pixels"].shape == (3, h, w)
    assert np.array_equal(
        ns["pixels"][:, :100, :100].compute(), store.read_region_chw(lvl, 0, 0, 100, 100)
    )
    assert ns["probs"].shape == (2, 2)
    assert len(ns["result"]["lrs"]) == 0  # the caller stepped: the engine did not
    assert (tmp_path / "runs" / "api-example" / "summary.json").is_file()


def test_importing_the_package_registers_the_codec_and_imports_no_torch() -> None:
    code = (
        "import sys, wsi_patchgd\n"
        "from zarr.registry import get_codec_class\n"
        "get_codec_class('wsi_patchgd.jpeg')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from wsi_patchgd.readers.registry import reader_names\n"
        "assert 'store' in reader_names()\n"
        "wsi_patchgd.SlideDataset\n"
        "assert 'torch' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr


def test_convert_refuses_unknown_options_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="patch_sise"):
        wp.convert("x.svs", str(tmp_path), patch_sise=128)
    with pytest.raises(ConfigError, match="not both"):
        wp.convert("x.svs", str(tmp_path), options=wp.ConvertOptions(), codec="jpeg")


def test_a_bad_slide_is_a_result_not_an_exception(tmp_path: Path, data_dir: Path) -> None:
    res = wp.convert([str(SLIDES / "broken.svs")], str(tmp_path / "out"), workers=1)
    assert [r.status for r in res] == ["failed"] and "broken.svs" in (res[0].reason or "") + (
        res[0].source
    )


def test_open_store_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(wp.StoreError):
        wp.open_store(tmp_path)


def test_slide_dataset_with_distributed_sampler(tmp_path: Path, data_dir: Path) -> None:
    """Two replicas of DistributedSampler split the slides into disjoint shares covering all."""
    from torch.utils.data import DataLoader, DistributedSampler

    from wsi_patchgd.data import ManifestRow

    res = wp.convert([str(SLIDES / "kidney-48-5.tif")], str(tmp_path), patch_size=128, workers=1)
    assert res[0].status == "ok", res[0].reason
    url = res[0].store
    rows = [ManifestRow(f"s{i}", url, i % 2, 0) for i in range(5)]
    ds = wp.SlideDataset(rows, level=1)
    assert len(ds) == 5 and ds.labels == [0, 1, 0, 1, 0]
    item = ds[3]
    assert (item.index, item.slide_id, item.label) == (3, "s3", 1)
    assert item.grid.shape == ds.patch_source.grid(3).shape
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=wp.SlideDataset.collate)
        for batch in loader:
            assert batch.label.tolist() == [rows[i].label for i in batch.index.tolist()]
            seen += batch.index.tolist()
    assert sorted(set(seen)) == list(range(5))  # padded to 6 by the sampler: one repeats
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ConfigError):
        wp.SlideDataset([])


def test_train_takes_a_path_a_mapping_or_a_runconfig(tmp_path: Path) -> None:
    cfg = wp.load_config(None, ["data.manifest=m.csv", f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="overrides"):
        wp.train(cfg, overrides=["optim.lr=1"])
    with pytest.raises(ConfigError, match="optim.lrr"):
        wp.train({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="not found"):
        wp.train(tmp_path / "missing.yaml")
    assert os.environ.get("WORLD_SIZE", "1") == "1"
