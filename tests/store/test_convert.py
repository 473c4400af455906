"""Conversion into stores: exactness against OpenSlide, pyramid, metadata, resume, overwrite."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CMU, KIDNEY, TCGA
from wsi_patchgd.errors import StoreError, StoreIncompleteError, WsiPatchGDError
from wsi_patchgd.store import (
    ATTR_KEY,
    ConvertOptions,
    SlideStore,
    convert_many,
    convert_slide,
    downsample2x,
    write_report,
)
from wsi_patchgd.store.convert import STAGES
from wsi_patchgd.store.tasks import run_shards_locally

OPTS = ConvertOptions(patch_size=256, shard_patches=4, min_level_size=256)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("stores")
    res = {}
    for src in (CMU, TCGA, KIDNEY):
        dest = out / (src.stem + ".zarr")
        r = convert_slide(str(src), str(dest), OPTS)
        assert r.status == "ok", r
        res[src.name] = dest
    return res


@pytest.mark.parametrize("src", [CMU, TCGA], ids=lambda p: p.name)
def test_level0_equals_openslide_at_random_patches(src: Path, stores: dict[str, Path]) -> None:
    """>= 200 random patch positions per slide, byte for byte against OpenSlide read_region."""
    store = SlideStore(str(stores[src.name]))
    rng = np.random.default_rng(1)
    with openslide.OpenSlide(str(src)) as s:
        w, h = s.dimensions
        xs = rng.integers(0, w - 256, 200)
        ys = rng.integers(0, h - 256, 200)
        got = store.read_regions_chw(0, list(zip(xs.tolist(), ys.tolist(), strict=True)), 256, 256)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            ref = np.asarray(s.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"))
            np.testing.assert_array_equal(got[i].transpose(1, 2, 0), ref)


def test_every_level_is_source_or_2x_mean(stores: dict[str, Path]) -> None:
    store = SlideStore(str(stores[TCGA.name]))
    levels = store.meta.levels
    assert [lv.origin for lv in levels[:3]] == ["source:0", "source:1", "downsample:1"]
    src1 = tifffile.imread(TCGA, key=2)  # the SVS's own 2x level
    np.testing.assert_array_equal(np.asarray(store.array(1)[:]).transpose(1, 2, 0), src1)
    for i in range(2, store.n_levels):
        below = np.asarray(store.array(i - 1)[:])
        np.testing.assert_array_equal(np.asarray(store.array(i)[:]), downsample2x(below))
    cmu = SlideStore(str(stores[CMU.name]))
    assert [lv.origin for lv in cmu.meta.levels] == [
        "source:0",
        "downsample:0",
        "downsample:1",
        "downsample:2",
    ]


def test_layout_and_metadata(stores: dict[str, Path]) -> None:
    path = stores[CMU.name]
    store = SlideStore(str(path))
    arr = store.array(0)
    assert arr.shape == (3, 2967, 2220) and arr.dtype == np.uint8
    assert arr.chunks == (3, 256, 256) and arr.shards == (3, 1024, 1024)
    assert arr.metadata.dimension_names == ("c", "y", "x")
    # one object per shard, not per chunk
    n_objects = len(list((path / "0" / "c").rglob("*")))
    assert n_objects <= 3 * 3 + 3 + 3, n_objects
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 0.998, 0.998]
    meta = attrs[ATTR_KEY]
    assert meta["complete"] is True and meta["format_version"] == 1
    assert meta["source"]["name"] == CMU.name and meta["source"]["size"] == CMU.stat().st_size
    assert meta["vendor"] == "aperio" and meta["mpp"] == 0.499 and meta["objective_power"] == 20
    assert meta["patch_size"] == 256 and meta["codec"] == "blosc-lz4"
    assert "params" in meta["tissue"] and 0 < meta["tissue"]["fraction"] < 1
    assert not (path / ".progress").exists()


def test_tissue_tables(stores: dict[str, Path]) -> None:
    store = SlideStore(str(stores[CMU.name]))
    mask = store.tissue_mask()
    assert mask.dtype == bool and mask.any() and not mask.all()
    for level in range(store.n_levels):
        fr = store.patch_fractions(level)
        assert fr.shape == store.grid_shape(level)
        assert fr.dtype == np.float32 and 0 <= fr.min() and fr.max() <= 1
    # every level's table is the mask's mean over each patch's box (brute force)
    md = store.mask_downsample
    for level in range(store.n_levels):
        fr = store.patch_fractions(level)
        side = store.patch_size * store.downsample(level) / md  # patch side in mask pixels
        assert side == int(side)
        s_ = int(side)
        for i in range(fr.shape[0]):
            for j in range(fr.shape[1]):
                box = mask[i * s_ : (i + 1) * s_, j * s_ : (j + 1) * s_]
                assert fr[i, j] == pytest.approx(box.sum() / s_**2, abs=1e-5), (level, i, j)
    fr0 = store.patch_fractions(0)
    assert fr0.max() > 0.9 and fr0.min() == 0.0  # dense epidermis counts as tissue


def test_readers_refuse_incomplete_store(stores: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores[KIDNEY.name], copy)
    g = zarr.open_group(str(copy), mode="r+")
    meta = dict(g.attrs[ATTR_KEY])
    meta["complete"] = False
    g.attrs[ATTR_KEY] = meta
    with pytest.raises(StoreIncompleteError, match="rerun `wsi-patchgd convert`"):
        SlideStore(str(copy))
    assert SlideStore(str(copy), require_complete=False).n_levels == 3
    with pytest.raises(StoreError, match="no Zarr store"):
        SlideStore(str(tmp_path / "nothing.zarr"))


class Crash(RuntimeError):
    pass


def crashing_runner(after: int) -> Any:
    """Runs shards like the real runner, then dies after ``after`` of them (a killed job)."""
    count = {"n": 0}

    def run(tasks: list[Any], on_done: Any) -> None:
        for t in tasks:
            if count["n"] >= after:
                raise Crash("killed")
            run_shards_locally([t], on_done)
            count["n"] += 1

    return run


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    out = {k: np.asarray(v[:]) for k, v in g.arrays()}
    out.update({f"tissue/{k}": np.asarray(v[:]) for k, v in g["tissue"].arrays()})
    out.update({f"fraction/{k}": np.asarray(v[:]) for k, v in g["tissue/fraction"].arrays()})
    return out


def test_resume_after_crash_equals_uninterrupted(stores: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "tcga.zarr"
    with pytest.raises(Crash):
        convert_slide(str(TCGA), str(dest), OPTS, run_shards=crashing_runner(7))
    with pytest.raises(StoreIncompleteError):
        SlideStore(str(dest))
    assert len(list((dest / ".progress").rglob("*.*"))) == 7
    r = convert_slide(str(TCGA), str(dest), OPTS)
    assert r.status == "ok" and r.resumed
    ref = _arrays(stores[TCGA.name])
    got = _arrays(dest)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert convert_slide(str(TCGA), str(dest), OPTS).status == "skipped"


def test_overwrite_never_loses_the_complete_store(tmp_path: Path, data_dir: Path) -> None:
    dest = tmp_path / "k.zarr"
    assert convert_slide(str(KIDNEY), str(dest), OPTS).status == "ok"
    before = _arrays(dest)
    with pytest.raises(Crash):
        convert_slide(
            str(KIDNEY),
            str(dest),
            ConvertOptions(**{**OPTS.__dict__, "overwrite": True}),
            run_shards=crashing_runner(1),
        )
    assert SlideStore(str(dest)).complete  # the old store is still there, complete
    for k, v in _arrays(dest).items():
        np.testing.assert_array_equal(v, before[k])
    r = convert_slide(
        str(KIDNEY), str(dest), ConvertOptions(**{**OPTS.__dict__, "overwrite": True})
    )
    assert r.status == "ok"
    assert not (tmp_path / "k.zarr.rebuild").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.zarr"]


def test_foreign_contents_are_not_overwritten(stores: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    dest = tmp_path / "x.zarr"
    shutil.copytree(stores[KIDNEY.name], dest)
    with pytest.raises(StoreError, match="another source"):
        convert_slide(str(CMU), str(dest), OPTS)
    other = tmp_path / "other"
    other.mkdir()
    (other / "zarr.json").write_text("{}")
    with pytest.raises(StoreError, match="not a wsi_patchgd store"):
        convert_slide(str(CMU), str(other), OPTS)


def test_result_reports_seconds_per_stage(tmp_path: Path, data_dir: Path) -> None:
    """A real conversion times every stage (the report carries them); they sum to at most the
    conversion's seconds, which are at most the wall time around the call."""
    dest = tmp_path / "k.zarr"
    t0 = time.perf_counter()
    r = convert_slide(str(KIDNEY), str(dest), OPTS)
    wall = time.perf_counter() - t0
    assert r.status == "ok", r
    split = ["shards.read", "shards.encode", "shards.write"]
    side = ["tissue.detect", "tissue.tables"]  # the mask level comes from the source: beside
    assert list(r.timings) == [*STAGES, *split, *side]
    assert all(t >= 0 for t in r.timings.values()), r.timings
    assert r.timings["shards"] > 0 and r.timings["tissue"] > 0
    assert all(r.timings[k] > 0 for k in split + side), r.timings
    assert sum(r.timings[k] for k in STAGES) <= r.seconds <= wall
    # one thread ran the shards here: their parts fit in the stage's wall time
    assert sum(r.timings[k] for k in split) <= r.timings["shards"]
    # the side thread started after the lock and ended before the tissue stage did
    assert sum(r.timings[k] for k in side) <= r.seconds - r.timings["plan"]
    write_report(str(tmp_path / "r.json"), [r], OPTS)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["slides"][0]["timings"] == r.timings
    again = convert_slide(str(KIDNEY), str(dest), OPTS)  # complete: skipped after "create"
    assert again.status == "skipped"
    assert list(again.timings) == list(STAGES[:3])
    assert all(t >= 0 for t in again.timings.values())


def test_batch_on_local_cluster_reports_every_slide(tmp_path: Path, data_dir: Path) -> None:
    from distributed import Client, LocalCluster

    report = tmp_path / "report.json"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        res = convert_many(
            [str(KIDNEY), str(data_dir / "slides" / "broken.svs"), str(tmp_path / "nope.svs")],
            str(tmp_path / "out"),
            OPTS,
            report=str(report),
            quiet=True,
            client=client,
        )
    assert [r.status for r in res] == ["ok", "failed", "failed"]
    doc = json.loads(report.read_text())
    assert doc["summary"] == {**doc["summary"], "ok": 1, "failed": 2, "skipped": 0, "total": 3}
    assert "broken.svs" in doc["slides"][1]["reason"]
    store = SlideStore(str(tmp_path / "out" / "kidney-48-5.zarr"))
    ref = tifffile.imread(KIDNEY)
    np.testing.assert_array_equal(np.asarray(store.array(0)[:]).transpose(1, 2, 0), ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_downsample2x_is_rounded_2x2_mean(h: int, w: int, seed: int) -> None:
    a = np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)
    got = downsample2x(a)
    assert got.shape == (3, h // 2, w // 2)
    for c in range(3):
        for y in range(h // 2):
            for x in range(w // 2):
                block = a[c, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].astype(int)
                assert got[c, y, x] == (block.sum() + 2) // 4


@pytest.mark.parametrize("name", [CMU.name, TCGA.name, KIDNEY.name])
def test_fast_patch_reads_equal_zarr_reads(name: str, stores: dict[str, Path]) -> None:
    """Every patch of every level through the chunk reader equals zarr's own read (edges too)."""
    store = SlideStore(str(stores[name]))
    for level in range(store.n_levels):
        assert store.chunk_reader(level) is not None
        n_h, n_w = store.grid_shape(level)
        rows, cols = np.divmod(np.arange(n_h * n_w), n_w)
        fast = store.read_patches(level, rows, cols)
        p = store.patch_size
        slow = store.read_regions_chw(
            level, [(int(c) * p, int(r) * p) for r, c in zip(rows, cols, strict=True)], p, p
        )
        np.testing.assert_array_equal(fast, slow)


def test_small_job_runs_on_threads_and_equals_the_dask_run(tmp_path: Path, data_dir: Path) -> None:
    """A one-slide job needs no cluster (and does not import ``distributed``); its store is the
    same, array for array, as the one a Dask cluster writes."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from wsi_patchgd.store import convert_many, ConvertOptions\n"
        f"r = convert_many([{str(CMU)!r}], {str(tmp_path / 'threads')!r}, "
        "ConvertOptions(patch_size=256, shard_patches=4, min_level_size=256), quiet=True)\n"
        "assert r[0].status == 'ok', r\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        res = convert_many([str(CMU)], str(tmp_path / "dask"), OPTS, quiet=True, client=client)
    assert res[0].status == "ok"
    a, b = (
        _arrays(tmp_path / "threads" / CMU.with_suffix(".zarr").name),
        _arrays(tmp_path / "dask" / CMU.with_suffix(".zarr").name),
    )
    assert a.keys() == b.keys() and len(a) > 3
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_early_tissue_mask_is_the_mask_of_the_written_level(stores: dict[str, Path]) -> None:
    """The conversion detects tissue from the source's copy of the mask level while it writes
    the levels: that mask must be the one detected on the level as stored."""
    from wsi_patchgd.tissue import detect_tissue

    for name in (CMU.name, TCGA.name):
        store = SlideStore(str(stores[name]))
        meta = json.loads((stores[name] / "zarr.json").read_text())["attributes"][ATTR_KEY]
        level = np.asarray(store.array(meta["tissue"]["mask_level"])[:]).transpose(1, 2, 0)
        np.testing.assert_array_equal(store.tissue_mask(), detect_tissue(level, OPTS.tissue))


def test_mask_level_is_as_fine_as_the_patch_grid_needs(stores: dict[str, Path]) -> None:
    """The mask comes from the coarsest level within mask_max_size that keeps 16 mask pixels
    along a level-0 patch side; where none keeps them, and with no such limit, from the finest
    level within mask_max_size."""
    from wsi_patchgd.readers import open_slide
    from wsi_patchgd.store.plan import plan_levels
    from wsi_patchgd.store.tissue_tables import early_mask, mask_plan

    with open_slide(str(TCGA)) as reader:
        plans = plan_levels(reader, OPTS)
        lvl = mask_plan(plans, OPTS)
        assert (lvl.downsample, max(lvl.height, lvl.width)) == (16.0, 277)  # 256 / 16 = 16 px
        unlimited = ConvertOptions(**{**OPTS.__dict__, "mask_patch_pixels": 10**6})
        finest = mask_plan(plans, unlimited)
        assert (finest.downsample, max(finest.height, finest.width)) == (8.0, 555)
        # 64 px patches would need the 4x level (1110 px > mask_max_size): the finest within
        few = ConvertOptions(**{**OPTS.__dict__, "patch_size": 64})
        assert mask_plan(plan_levels(reader, few), few).downsample == 8.0
        # huge patches would allow a 17 px mask: never coarser than 256 px (the 277 px level)
        big = ConvertOptions(**{**OPTS.__dict__, "patch_size": 4096, "min_level_size": 16})
        big_plans = plan_levels(reader, big)
        assert max(big_plans[-1].width, big_plans[-1].height) < 32
        assert mask_plan(big_plans, big).downsample == 16.0
        # the mask level is three 2x means of the source's 2x level: detected from the source
        # itself (while the levels are written), the same mask as on the level as stored
        assert lvl.origin == "downsample:3"
        early = early_mask(reader, plans, OPTS)
    store = SlideStore(str(stores[TCGA.name]))
    assert store.meta.tissue.mask_level == lvl.index
    assert early is not None
    with pytest.raises(WsiPatchGDError, match="mask_patch_pixels=0"):
        ConvertOptions(mask_patch_pixels=0)
    np.testing.assert_array_equal(early, store.tissue_mask())


def test_default_codec_is_bitshuffled_lz4_and_old_stores_still_read(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    from wsi_patchgd.store.chunk_reader import ChunkReader

    path = stores[KIDNEY.name]
    meta = json.loads((path / "0" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert inner[1]["name"] == "blosc"
    assert (
        inner[1]["configuration"] | {"cname": "lz4", "shuffle": "bitshuffle", "clevel": 9}
        == (inner[1]["configuration"])
    )
    # a store written before (LZ4 without shuffle) reads the same through the chunk reader
    ref = np.asarray(zarr.open_array(str(path / "0"), mode="r")[:])
    old = zarr.create_array(
        str(tmp_path / "old.zarr"),
        shape=ref.shape,
        chunks=(3, 256, 256),
        shards=(3, 1024, 1024),
        dtype="uint8",
        compressors=[zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
        fill_value=255,
    )
    old[:] = ref
    cr = ChunkReader(str(tmp_path / "old.zarr"), old.metadata.to_dict())
    got = cr.read_chunk((0, 1, 1))
    np.testing.assert_array_equal(got, ref[:, 256:512, 256:512])
