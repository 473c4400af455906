"""JPEG passthrough (``--codec jpeg``): source JPEG tiles stored unchanged, decoded exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from tests.conftest import CMU, TCGA
from wsi_patchgd.cli import main as cli
from wsi_patchgd.datasets.synthetic import write_synthetic_slide
from wsi_patchgd.readers.tiff_tiles import JpegTiles, jpeg_levels
from wsi_patchgd.store import ATTR_KEY, ConvertOptions, SlideStore, convert_slide, downsample2x
from wsi_patchgd.store.jpeg import CODEC_NAME, JpegTileCodec

PASS = "jpeg (source tiles, unchanged)"


def _levels(store: Path) -> list[dict]:
    return json.loads((store / "zarr.json").read_text())["attributes"][ATTR_KEY]["levels"]


@pytest.fixture(scope="module")
def cmu240(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """CMU-1 (Aperio, RGB-coded JPEG, 240 px tiles) converted through the CLI with P = 240."""
    out = tmp_path_factory.mktemp("pt")
    res = CliRunner().invoke(
        cli,
        ["convert", str(CMU), "--out", str(out), "--patch-size", "240", "--codec", "jpeg", "-q",
         "--workers", "2", "--report", str(out / "report.json")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out / "cmu-1-small-region.zarr"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3000 x 2600 pyramidal YCbCr-JPEG TIFF with 256 px tiles, converted with P = 256."""
    out = tmp_path_factory.mktemp("pt-syn")
    src = out / "syn.tif"
    write_synthetic_slide(src, 3000, 2600, seed=3, tile=256)
    dest = out / "syn.zarr"
    r = convert_slide(
        str(src), str(dest), ConvertOptions(patch_size=256, shard_patches=4, codec="jpeg")
    )
    assert r.status == "ok", r
    return src, dest


def test_level0_tiles_are_the_source_bytes(cmu240: Path) -> None:
    levels = _levels(cmu240)
    assert levels[0]["codec"] == PASS and levels[1]["codec"] == "blosc-lz4"
    meta = json.loads((cmu240 / "0" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == [CODEC_NAME]
    # chunk (0, 2, 3) of the store is tile (2, 3) of the TIFF, byte for byte
    with tifffile.TiffFile(CMU) as tif:
        page = tif.pages[0]
        nx = -(-page.imagewidth // page.tilewidth)
        i = 2 * nx + 3
        with open(CMU, "rb") as fh:
            fh.seek(page.dataoffsets[i])
            tile = fh.read(page.databytecounts[i])
    shard = (cmu240 / "0" / "c" / "0" / "0" / "0").read_bytes()
    per = 8 * 8
    index = np.frombuffer(shard[-(per * 16 + 4) : -4], "<u8").reshape(8, 8, 2)
    off, n = (int(v) for v in index[2, 3])
    assert shard[off : off + n] == tile


def test_level0_equals_openslide_at_200_random_patches(cmu240: Path) -> None:
    """Aperio's RGB-coded JPEG decoded through our codec vs OpenSlide, byte for byte."""
    store = SlideStore(str(cmu240))
    rng = np.random.default_rng(7)
    with openslide.OpenSlide(str(CMU)) as s:
        w, h = s.dimensions
        xs, ys = rng.integers(0, w - 240, 200), rng.integers(0, h - 240, 200)
        got = store.read_regions_chw(0, list(zip(xs.tolist(), ys.tolist(), strict=True)), 240, 240)
        worst = 0
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            ref = np.asarray(s.read_region((int(x), int(y)), 0, (240, 240)).convert("RGB"))
            worst = max(worst, int(np.abs(got[i].transpose(1, 2, 0).astype(int) - ref).max()))
    print(f"\nJPEG passthrough vs OpenSlide, CMU-1 level 0, 200 patches: max |diff| = {worst}")
    assert worst == 0


def test_patch_reads_fast_path_equals_zarr(cmu240: Path) -> None:
    store = SlideStore(str(cmu240))
    arr = zarr.open_array(str(cmu240 / "0"), mode="r")  # plain zarr: the codec is registered
    coords = [(0, 0), (3, 5), (12, 9)]  # (row, col) of patches, the last one at the edge
    assert store.chunk_reader(0) is not None  # the fast path handles JPEG levels
    got = store.read_patches(0, [r for r, _ in coords], [c for _, c in coords])
    for (r, c), g in zip(coords, got, strict=True):
        ref = np.full((3, 240, 240), 255, np.uint8)
        part = np.asarray(arr[:, r * 240 : (r + 1) * 240, c * 240 : (c + 1) * 240])
        ref[:, : part.shape[1], : part.shape[2]] = part
        np.testing.assert_array_equal(np.asarray(g), ref)


def test_pyramid_levels_passthrough_and_downsampled(synthetic: tuple[Path, Path]) -> None:
    src, dest = synthetic
    levels = _levels(dest)
    with tifffile.TiffFile(src) as tif:
        n_src = len(tif.series[0].levels)
    assert [lv["codec"] for lv in levels[:n_src]] == [PASS] * n_src
    g = zarr.open_group(str(dest), mode="r")
    with openslide.OpenSlide(str(src)) as s:
        for i in range(n_src):
            h, w = g[str(i)].shape[1:]
            ref = np.asarray(s.read_region((0, 0), i, (w, h)).convert("RGB")).transpose(2, 0, 1)
            ours = np.asarray(g[str(i)][:])
            assert int(np.abs(ours.astype(int) - ref).max()) == 0, f"level {i}"
    for i in range(n_src, len(levels)):
        assert levels[i]["origin"] == f"downsample:{i - 1}"
        np.testing.assert_array_equal(g[str(i)][:], downsample2x(np.asarray(g[str(i - 1)][:])))


def test_store_is_smaller_than_lossless(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    src, dest = synthetic
    lossless = tmp_path / "lossless.zarr"
    convert_slide(str(src), str(lossless), ConvertOptions(patch_size=256, shard_patches=4))

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    print(f"\nstore size: jpeg {size(dest) / 1e6:.1f} MB, blosc-lz4 {size(lossless) / 1e6:.1f} MB")
    assert size(dest) < size(lossless) / 2
    a = zarr.open_group(str(dest), mode="r")
    b = zarr.open_group(str(lossless), mode="r")
    np.testing.assert_array_equal(a["0"][:], b["0"][:])  # same pixels, only the storage differs


def test_no_passthrough_where_tiles_do_not_line_up(data_dir: Path, tmp_path: Path) -> None:
    """JPEG 2000 (TCGA) and a patch size that does not divide the tile size fall back to
    blosc-lz4."""
    assert jpeg_levels(str(TCGA), 256) == []
    assert [j.problem for j in jpeg_levels(str(CMU), 256)] == [
        "240 px tiles are not a multiple of 256 px patches"
    ]
    assert [j.page for j in jpeg_levels(str(CMU), 240)] == [0]
    dest = tmp_path / "cmu256.zarr"
    convert_slide(str(CMU), str(dest), ConvertOptions(patch_size=256, codec="jpeg"))
    assert {lv["codec"] for lv in _levels(dest)} == {"blosc-lz4"}
    with openslide.OpenSlide(str(CMU)) as s:
        ref = np.asarray(s.read_region((256, 512), 0, (256, 256)).convert("RGB"))
    got = SlideStore(str(dest)).read_regions_chw(0, [(256, 512)], 256, 256)[0]
    np.testing.assert_array_equal(got.transpose(1, 2, 0), ref)


def test_resume_after_crash_equals_uninterrupted(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.store.test_convert import Crash, _arrays, crashing_runner

    src, ref = synthetic
    dest = tmp_path / "syn.zarr"
    opts = ConvertOptions(patch_size=256, shard_patches=4, codec="jpeg")
    with pytest.raises(Crash):
        convert_slide(str(src), str(dest), opts, run_shards=crashing_runner(3))
    r = convert_slide(str(src), str(dest), opts)
    assert r.status == "ok" and r.resumed
    a, b = _arrays(ref), _arrays(dest)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_codec_through_zarr_writes(tmp_path: Path, data_dir: Path) -> None:
    """Writing through zarr re-encodes (YCbCr, quality 95: close, not exact); RGB-coded source
    levels refuse writes with a message saying what to do."""
    with openslide.OpenSlide(str(CMU)) as s:  # real H&E
        img = np.asarray(s.read_region((1000, 1200), 0, (64, 64)).convert("RGB"))
    img = np.ascontiguousarray(img.transpose(2, 0, 1))
    a = zarr.create_array(
        str(tmp_path / "y.zarr"), shape=(3, 64, 64), chunks=(3, 64, 64), dtype="uint8",
        serializer=JpegTileCodec(None, None, 2), compressors=None, fill_value=255,
    )  # fmt: skip
    a[:] = img
    back = np.asarray(zarr.open_array(str(tmp_path / "y.zarr"), mode="r")[:])
    err = np.abs(back.astype(int) - img)
    print(f"\nJPEG q95 re-encode of a real H&E patch: mean |diff| {err.mean():.2f}")
    assert 0 < err.mean() < 3
    b = zarr.create_array(
        str(tmp_path / "r.zarr"), shape=(3, 64, 64), chunks=(3, 64, 64), dtype="uint8",
        serializer=JpegTileCodec(None, 2, 2), compressors=None, fill_value=255,
    )  # fmt: skip
    with pytest.raises(ValueError, match="read-only"):
        b[:] = img


def test_tiles_reads_only_existing_tiles(data_dir: Path) -> None:
    with JpegTiles(str(CMU)) as jt:
        got = jt.tiles(0, range(0, 2), range(8, 12))  # the slide is 10 tiles wide
    assert sorted(got) == [(0, 8), (0, 9), (1, 8), (1, 9)]
    assert all(b[:2] == b"\xff\xd8" for b in got.values())


def test_plain_zarr_finds_the_codec_by_entry_point(cmu240: Path) -> None:
    """A process that only imports zarr reads the JPEG level: zarr loads the codec through the
    ``zarr.codecs`` entry point of the installed package."""
    import subprocess
    import sys

    code = (
        "import sys, zarr, numpy as np\n"
        "assert 'wsi_patchgd' not in sys.modules\n"
        f"a = zarr.open_array({str(cmu240 / '0')!r}, mode='r')\n"
        "x = np.asarray(a[:, 480:720, 240:480])\n"
        "print(x.shape, int(x.sum()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    ref = SlideStore(str(cmu240)).read_regions_chw(0, [(240, 480)], 240, 240)[0]
    assert r.stdout.split() == ["(3,", "240,", "240)", str(int(ref.astype(np.int64).sum()))]


def test_tiles_from_many_threads_at_once(synthetic: tuple[Path, Path]) -> None:
    """Regression: tifffile parses pages lazily from one file handle; the first reads of every
    page arrive from several threads at once (as Dask workers do) and must not race."""
    from concurrent.futures import ThreadPoolExecutor

    src, _ = synthetic
    pages = [j.page for j in jpeg_levels(str(src), 256)]
    assert len(pages) >= 3
    with JpegTiles(str(src)) as jt:
        serial = {p: jt.tiles(p, range(0, 4), range(0, 4)) for p in pages}
    for _ in range(5):
        with JpegTiles(str(src)) as jt, ThreadPoolExecutor(8) as ex:
            jobs = [p for p in pages for _ in range(4)]
            got = list(ex.map(lambda p: (p, jt.tiles(p, range(0, 4), range(0, 4))), jobs))
        for p, tiles in got:
            assert tiles == serial[p]
