"""Stores on S3: a real moto server on 127.0.0.1, read and written through s3fs (no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import s3fs
import tifffile

from tests.conftest import CMU, KIDNEY
from wsi_patchgd.errors import StoreError
from wsi_patchgd.readers import open_slide
from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many

OPTS = ConvertOptions(patch_size=256, shard_patches=4, min_level_size=256)


def test_convert_into_s3_and_read_back(
    s3_bucket: tuple[str, dict[str, str]], data_dir: Path
) -> None:
    bucket, so = s3_bucket
    res = convert_many(
        [str(CMU)],
        f"{bucket}/stores",
        OPTS,
        workers=2,
        quiet=True,
        store_options=so,
        report=f"{bucket}/report.json",
    )
    assert [r.status for r in res] == ["ok"], res
    store = SlideStore(f"{bucket}/stores/cmu-1-small-region.zarr", so)
    assert store.complete and store.n_levels == 4
    rng = np.random.default_rng(3)
    xs, ys = rng.integers(0, 2220 - 256, 40), rng.integers(0, 2967 - 256, 40)
    got = store.read_regions_chw(0, list(zip(xs.tolist(), ys.tolist(), strict=True)), 256, 256)
    with openslide.OpenSlide(str(CMU)) as s:
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            ref = np.asarray(s.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"))
            np.testing.assert_array_equal(got[i].transpose(1, 2, 0), ref)
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    keys = fs.find(f"{bucket}/stores/cmu-1-small-region.zarr")
    assert not any(".progress" in k for k in keys)
    assert len([k for k in keys if ".zarr/0/c/" in k]) == 9  # one object per shard (3 x 3)
    assert fs.cat(f"{bucket}/report.json")
    # rerun: the complete S3 store is skipped
    again = convert_many(
        [str(CMU)], f"{bucket}/stores", OPTS, workers=1, quiet=True, store_options=so
    )
    assert [r.status for r in again] == ["skipped"]


def test_source_on_s3(
    s3_bucket: tuple[str, dict[str, str]], tmp_path: Path, data_dir: Path
) -> None:
    bucket, so = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    fs.put(str(KIDNEY), f"{bucket}/slides/{KIDNEY.name}")
    with open_slide(f"{bucket}/slides/{KIDNEY.name}", so) as r:
        assert r.name == "tifffile"
    res = convert_many(
        [f"{bucket}/slides/*.tif"], str(tmp_path), OPTS, workers=1, quiet=True, source_options=so
    )
    assert [r.status for r in res] == ["ok"], res
    store = SlideStore(str(tmp_path / "kidney-48-5.zarr"))
    np.testing.assert_array_equal(
        np.asarray(store.array(0)[:]).transpose(1, 2, 0), tifffile.imread(KIDNEY)
    )


def test_missing_s3_store_is_one_clear_error(s3_bucket: tuple[str, dict[str, str]]) -> None:
    bucket, so = s3_bucket
    with pytest.raises(StoreError, match="no Zarr store there"):
        SlideStore(f"{bucket}/nothing.zarr", so)


def test_fast_patch_reads_from_s3(
    s3_bucket: tuple[str, dict[str, str]], tmp_path: Path, data_dir: Path
) -> None:
    bucket, so = s3_bucket
    convert_many([str(KIDNEY)], f"{bucket}/s", OPTS, workers=1, quiet=True, store_options=so)
    convert_many([str(KIDNEY)], str(tmp_path), OPTS, workers=1, quiet=True)
    remote = SlideStore(f"{bucket}/s/kidney-48-5.zarr", so)
    local = SlideStore(str(tmp_path / "kidney-48-5.zarr"))
    n_h, n_w = local.grid_shape(0)
    rows, cols = np.divmod(np.arange(n_h * n_w), n_w)
    assert remote.chunk_reader(0) is not None and remote.chunk_reader(0).remote
    np.testing.assert_array_equal(
        remote.read_patches(0, rows, cols), local.read_patches(0, rows, cols)
    )


def test_heatmap_layer_written_into_an_s3_store(
    s3_bucket: tuple[str, dict[str, str]], data_dir: Path
) -> None:
    """predict's store layers on object storage: the float image and the label land in the
    S3 store readable by zarr, the label is registered once, a rerun replaces the values, and
    the store's own levels, tissue and root attributes are untouched."""
    import json

    import zarr

    from wsi_patchgd.io import zarr_store
    from wsi_patchgd.store.layers import LabelClass, PatchLayout, write_patch_layer

    bucket, so = s3_bucket
    res = convert_many([str(KIDNEY)], f"{bucket}/s", OPTS, workers=1, quiet=True, store_options=so)
    assert [r.status for r in res] == ["ok"], res
    url = f"{bucket}/s/{KIDNEY.stem}.zarr"
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    root_before = fs.cat(f"{url}/zarr.json")
    store = SlideStore(url, so)
    layout = PatchLayout.of(store, 0)
    rng = np.random.default_rng(0)
    classes_info = [LabelClass(1, "negative", (0, 0, 255)), LabelClass(2, "positive", (255, 0, 0))]
    for attempt in range(2):  # the second write replaces the first
        values = rng.normal(size=layout.grid_shape).astype(np.float32)
        values[0, 0] = np.nan  # not scored
        classes = np.where(np.isnan(values), 0, np.where(values > 0, 2, 1))
        written = write_patch_layer(
            url, "patchgd", values, layout, classes, classes_info, storage_options=so
        )
        assert written == {"image": "heatmaps/patchgd", "label": "labels/patchgd"}
        fs.invalidate_cache()
        group = zarr.open_group(zarr_store(url, so), mode="r")
        got = np.asarray(group["heatmaps/patchgd/0"][:])
        np.testing.assert_array_equal(got, values)  # float32 round trip, nan included
        np.testing.assert_array_equal(np.asarray(group["labels/patchgd/0"][:]), classes)
        assert group["labels"].attrs["ome"]["labels"] == ["patchgd"], attempt
        ms = group["heatmaps/patchgd"].attrs["ome"]["multiscales"][0]
        assert ms["datasets"][0]["path"] == "0"
    assert fs.cat(f"{url}/zarr.json") == root_before
    assert SlideStore(url, so).verify(deep=True) == []
    keys = fs.find(f"{url}/heatmaps") + fs.find(f"{url}/labels")
    assert not any(".tmp-" in k or ".old-" in k for k in keys)
    meta = json.loads(fs.cat(f"{url}/labels/patchgd/zarr.json"))
    assert meta["attributes"]["ome"]["image-label"]["source"] == {"image": "../../"}
