"""Lossless re-tiling (``--codec jpeg``): source JPEG tiles cut into patch-size JPEGs in the DCT
domain where the patch size divides the tile size, exactly; decoded where that is not exact."""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
import zarr

from tests.conftest import CMU
from wsi_patchgd.datasets.synthetic import write_synthetic_slide
from wsi_patchgd.readers import open_slide
from wsi_patchgd.readers.jpeg_crop import abbreviate, cut_problem, cut_tile, frame_of
from wsi_patchgd.readers.tiff_tiles import jpeg_levels
from wsi_patchgd.store import ATTR_KEY, ConvertOptions, SlideStore, convert_slide
from wsi_patchgd.store.plan import plan_levels, with_passthrough


def _cmu_pixels() -> np.ndarray:
    with openslide.OpenSlide(str(CMU)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB")).copy()


@pytest.fixture(scope="module")
def p444(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A 3-level pyramidal TIFF of real H&E (CMU-1's pixels), 512 px JPEG tiles, 4:4:4."""
    path = tmp_path_factory.mktemp("retile") / "h&e-444.tif"
    levels = [_cmu_pixels()]
    while len(levels) < 3:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    with tifffile.TiffWriter(path) as tw:
        for i, a in enumerate(levels):
            tw.write(
                a, tile=(512, 512), photometric="rgb", compression="jpeg",
                compressionargs={"level": 90}, subsampling=(1, 1), subfiletype=1 if i else 0,
            )  # fmt: skip
    return path


def _level_bytes(store: Path, level: int) -> int:
    return sum(f.stat().st_size for f in (store / str(level) / "c").rglob("*") if f.is_file())


@pytest.mark.parametrize("patch", [128, 256])
def test_cut_levels_equal_the_source_decode(p444: Path, tmp_path: Path, patch: int) -> None:
    """Every patch of every cut level is tifffile's decode of the source level, exactly, and
    the level takes at most 1.3x the source level's tile bytes."""
    dest = tmp_path / "s.zarr"
    r = convert_slide(str(p444), str(dest), ConvertOptions(patch_size=patch, codec="jpeg"))
    assert r.status == "ok", r
    assert r.timings["shards.encode"] > 0  # the cuts are timed as the shards' encoding
    g = zarr.open_group(str(dest), mode="r")
    store = SlideStore(str(dest))
    with tifffile.TiffFile(p444) as tif:
        for i, page in enumerate(tif.pages[:3]):
            conf = json.loads((dest / str(i) / "zarr.json").read_text())["codecs"][0]
            inner = conf["configuration"]["codecs"][0]
            assert (
                inner["name"] == "wsi_patchgd.jpeg" and inner["configuration"]["source_tile"] == 512
            )
            ref = page.asarray()
            ours = np.asarray(g[str(i)][:]).transpose(1, 2, 0)
            assert int(np.abs(ours.astype(int) - ref).max()) == 0, f"level {i}"
            rows, cols = np.meshgrid(range(-(-ref.shape[0] // patch)), range(2), indexing="ij")
            got = store.read_patches(i, rows.ravel().tolist(), cols.ravel().tolist())  # fast path
            for rr, cc, p in zip(rows.ravel(), cols.ravel(), got, strict=True):
                part = ref[rr * patch : (rr + 1) * patch, cc * patch : (cc + 1) * patch]
                np.testing.assert_array_equal(
                    np.asarray(p)[:, : part.shape[0], : part.shape[1]].transpose(1, 2, 0), part
                )
            ratio = _level_bytes(dest, i) / sum(page.databytecounts)
            print(f"\nlevel {i}, 512 -> {patch} px cut: store / source bytes = {ratio:.3f}")
            assert ratio <= 1.3


def test_plan_says_which_levels_are_cut(p444: Path) -> None:
    with open_slide(str(p444)) as reader:
        opts = ConvertOptions(patch_size=128, codec="jpeg")
        plans = with_passthrough(plan_levels(reader, opts), jpeg_levels(str(p444), 128))
    assert [pl.jpeg_note for pl in plans] == [
        "jpeg (source tiles cut losslessly, 512 -> 128 px)"
    ] * 3
    assert all(pl.jpeg is not None and pl.jpeg.cut for pl in plans)


def test_subsampled_source_is_decoded_instead(tmp_path: Path) -> None:
    """4:2:0 tiles: cut patches would differ at their edges, so the levels fall back to the
    lossless codec, say why, and still hold the source's pixels exactly."""
    src = tmp_path / "syn.tif"
    write_synthetic_slide(src, 1300, 1100, seed=5, tile=512, n_markers=1)
    pages = jpeg_levels(str(src), 256)
    assert pages and all("chroma subsampled 2x2" in (j.problem or "") for j in pages)
    with open_slide(str(src)) as reader:
        opts = ConvertOptions(patch_size=256, codec="jpeg")
        plans = with_passthrough(plan_levels(reader, opts), pages)
    assert plans[0].jpeg is None and "decoded" in (plans[0].jpeg_note or "")
    dest = tmp_path / "syn.zarr"
    assert convert_slide(str(src), str(dest), opts).status == "ok"
    meta = json.loads((dest / "zarr.json").read_text())["attributes"][ATTR_KEY]
    assert {lv["codec"] for lv in meta["levels"]} == {"blosc-lz4"}
    with tifffile.TiffFile(src) as tif:
        ref = tif.pages[0].asarray()
    np.testing.assert_array_equal(
        zarr.open_array(str(dest / "0"), mode="r")[:].transpose(1, 2, 0), ref
    )


def test_subsampled_cuts_differ_at_patch_edges(data_dir: Path) -> None:
    """Why subsampled levels are not cut: measured on a real H&E tile, 4:2:0 cuts on the MCU
    grid decode exactly inside but not along their edges; 4:4:4 cuts decode exactly."""
    img = _cmu_pixels()[1000:1512, 800:1312].copy()
    for sub, exact in (((2, 2), False), ((1, 1), True)):
        tile = bytes(imagecodecs.jpeg_encode(img, level=85, subsampling=sub))
        assert (cut_problem(frame_of(tile), 512, 128) is None) == exact
        full = imagecodecs.jpeg_decode(tile).astype(int)
        cuts = cut_tile(tile, None, 128, [(1, 2)])
        diff = np.abs(imagecodecs.jpeg_decode(cuts[(1, 2)]) - full[128:256, 256:384])
        print(f"\nsubsampling {sub}: max |diff| {diff.max()}, inside {diff[2:-2, 2:-2].max()}")
        assert diff[2:-2, 2:-2].max() == 0 and (diff.max() == 0) == exact
    f420 = frame_of(bytes(imagecodecs.jpeg_encode(img[:240, :240], level=85, subsampling=(2, 2))))
    assert "MCU" in (cut_problem(f420, 240, 120) or "")  # 120 px is not on the 16 px grid


def test_abbreviated_cut_decodes_with_shared_tables(data_dir: Path) -> None:
    img = _cmu_pixels()[:512, :512].copy()
    tile = bytes(imagecodecs.jpeg_encode(img, level=80, subsampling=(1, 1)))
    whole = cut_tile(tile, None, 256, [(0, 1)])[(0, 1)]
    tables, short = abbreviate(whole)
    assert len(short) < len(whole) and b"\xff\xc4" not in short[: short.index(b"\xff\xda")]
    np.testing.assert_array_equal(
        imagecodecs.jpeg_decode(short, tables=tables), imagecodecs.jpeg_decode(whole)
    )


def test_aperio_240_tiles_cut_to_120(tmp_path: Path, data_dir: Path) -> None:
    """Real SVS (RGB-coded JPEG, no subsampling): 240 px tiles cut into 120 px patches equal
    OpenSlide's pixels, exactly, at a store size within 1.3x the source's tiles."""
    dest = tmp_path / "cmu120.zarr"
    r = convert_slide(str(CMU), str(dest), ConvertOptions(patch_size=120, codec="jpeg"))
    assert r.status == "ok", r
    store = SlideStore(str(dest))
    rng = np.random.default_rng(3)
    with openslide.OpenSlide(str(CMU)) as s:
        w, h = s.dimensions
        xs, ys = rng.integers(0, w - 120, 60), rng.integers(0, h - 120, 60)
        got = store.read_regions_chw(0, list(zip(xs.tolist(), ys.tolist(), strict=True)), 120, 120)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            ref = np.asarray(s.read_region((int(x), int(y)), 0, (120, 120)).convert("RGB"))
            np.testing.assert_array_equal(got[i].transpose(1, 2, 0), ref)
    with tifffile.TiffFile(CMU) as tif:
        ratio = _level_bytes(dest, 0) / sum(tif.pages[0].databytecounts)
    print(f"\nCMU-1 level 0, 240 -> 120 px cut: store / source bytes = {ratio:.3f}")
    assert ratio <= 1.3
