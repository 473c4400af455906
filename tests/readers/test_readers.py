"""One contract every reader passes on the same real slides, plus reader selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from tests.conftest import BROKEN, CMU, DATA, KIDNEY, TCGA
from wsi_patchgd.errors import SlideReadError
from wsi_patchgd.readers import (
    ImageReader,
    OpenSlideReader,
    SlideReader,
    TiffReader,
    open_slide,
    to_rgb_uint8,
)


def reference(path: Path, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Ground truth: OpenSlide's read_region at level 0 where OpenSlide reads the file, else
    tifffile's whole-level decode (OpenSlide resamples regions of levels whose downsample is
    not an integer, e.g. 2.0005 on the TCGA slide, so it is no reference there)."""
    if level == 0:
        try:
            s = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            pass
        else:
            with s:
                return np.asarray(s.read_region((x, y), 0, (w, h)).convert("RGB"))
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        return page.asarray()[y : y + h, x : x + w, :3]


class ReaderContract:
    """Every reader implementation subclasses this with its files."""

    files: tuple[Path, ...] = ()
    #: levels whose random regions must match the reference exactly
    exact_levels: int = 2

    def open(self, path: Path) -> SlideReader:
        raise NotImplementedError

    @pytest.fixture(params=None)
    def reader(self, request: pytest.FixtureRequest, data_dir: Path) -> SlideReader:
        r = self.open(request.param)
        yield r
        r.close()

    def test_levels(self, reader: SlideReader) -> None:
        assert reader.levels, "at least level 0"
        assert reader.levels[0].downsample == 1.0
        for a, b in zip(reader.levels, reader.levels[1:], strict=False):
            assert b.width < a.width and b.height < a.height and b.downsample > a.downsample

    def test_region_matches_reference(self, reader: SlideReader) -> None:
        rng = np.random.default_rng(0)
        path = Path(reader.source)
        for level, lv in enumerate(reader.levels[: self.exact_levels]):
            for _ in range(5):
                w, h = int(rng.integers(1, 400)), int(rng.integers(1, 400))
                x = int(rng.integers(0, max(1, lv.width - w)))
                y = int(rng.integers(0, max(1, lv.height - h)))
                got = reader.read_region(level, x, y, w, h)
                assert got.shape == (h, w, 3) and got.dtype == np.uint8
                np.testing.assert_array_equal(got, reference(path, level, x, y, w, h))

    def test_outside_is_white(self, reader: SlideReader) -> None:
        lv = reader.levels[0]
        got = reader.read_region(0, lv.width - 10, lv.height - 10, 30, 30)
        assert got.shape == (30, 30, 3)
        assert (got[10:, :] == 255).all() and (got[:, 10:] == 255).all()
        np.testing.assert_array_equal(
            got[:10, :10], reader.read_region(0, lv.width - 10, lv.height - 10, 10, 10)
        )
        assert (reader.read_region(0, -50, -50, 20, 20) == 255).all()

    def test_bad_level(self, reader: SlideReader) -> None:
        with pytest.raises(SlideReadError, match="level 99 does not exist"):
            reader.read_region(99, 0, 0, 4, 4)

    def test_thumbnail(self, reader: SlideReader) -> None:
        t = reader.thumbnail(256)
        assert t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3
        assert max(t.shape[:2]) <= 256

    def test_info(self, reader: SlideReader) -> None:
        info = reader.info()
        assert info.reader == reader.name and info.levels == reader.levels


def _params(files: tuple[Path, ...]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("reader", files, indirect=True, ids=[f.name for f in files])


@_params((CMU, TCGA))
class TestOpenSlideReader(ReaderContract):
    exact_levels = 1  # see reference(): level 1 is checked whole, from the origin, below

    def open(self, path: Path) -> SlideReader:
        return OpenSlideReader(path)

    def test_whole_upper_levels_exact(self, reader: SlideReader) -> None:
        for level, lv in enumerate(reader.levels[1:], start=1):
            got = reader.read_region(level, 0, 0, lv.width, lv.height)
            np.testing.assert_array_equal(
                got, reference(Path(reader.source), level, 0, 0, lv.width, lv.height)
            )

    def test_metadata(self, reader: SlideReader) -> None:
        assert reader.vendor == "aperio"
        if Path(reader.source) == CMU:
            assert reader.mpp == pytest.approx(0.499) and reader.objective_power == 20


@_params((KIDNEY, CMU, TCGA))
class TestTiffReader(ReaderContract):
    def open(self, path: Path) -> SlideReader:
        return TiffReader(path)


_TILE = sorted((DATA / "tiles").glob("tissue-*.png"))[:1]


@_params(tuple(_TILE))
class TestImageReader(ReaderContract):
    def open(self, path: Path) -> SlideReader:
        return ImageReader(path)

    def test_region_matches_reference(self, reader: SlideReader) -> None:
        from PIL import Image

        rgba = np.asarray(Image.open(reader.source).convert("RGBA"))
        np.testing.assert_array_equal(
            reader.read_region(0, 0, 0, rgba.shape[1], rgba.shape[0]), to_rgb_uint8(rgba)
        )


def test_open_slide_picks_readers(data_dir: Path) -> None:
    with open_slide(CMU) as r:  # Aperio: tifffile pixels with OpenSlide's metadata
        assert (r.name, r.vendor, r.mpp, r.objective_power) == ("tifffile", "aperio", 0.499, 20.0)
    with open_slide(KIDNEY) as r:  # OpenSlide refuses it; tifffile reads it
        assert r.name == "tifffile"
    with open_slide(_TILE[0]) as r:
        assert r.name == "pillow"
    with open_slide(CMU, reader="openslide") as r:
        assert r.name == "openslide"


def test_open_slide_errors_name_the_file(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(SlideReadError) as e:
        open_slide(BROKEN)
    msg = str(e.value)
    assert str(BROKEN) in msg and "OpenSlide" in msg and "tifffile" in msg and "Pillow" in msg
    with pytest.raises(SlideReadError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty file"):
        open_slide(tmp_path / "empty.svs")
    with pytest.raises(SlideReadError, match="is a directory"):
        open_slide(tmp_path)
    for src, keep in ((TCGA, 0.5), (CMU, 0.6)):  # directory lost / tile data lost
        trunc = tmp_path / f"trunc-{src.name}"
        trunc.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
        with pytest.raises(SlideReadError, match="truncated") as e:
            open_slide(trunc)
        assert str(trunc) in str(e.value)


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [200, 100, 0]
    rgba[0, 0, 3] = 255  # opaque: unchanged
    rgba[0, 1, 3] = 0  # transparent: white
    rgba[1, :, 3] = 128  # half: blended
    out = to_rgb_uint8(rgba)
    assert out[0, 0].tolist() == [200, 100, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    expect = [round((c * 128 + 255 * 127) / 255) for c in (200, 100, 0)]
    assert out[1, 0].tolist() == expect


def test_gray_and_16bit() -> None:
    g = np.array([[0, 128, 255]], np.uint8)
    assert to_rgb_uint8(g).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    g16 = np.array([[0, 257 * 128, 65535]], np.uint16)
    assert to_rgb_uint8(g16)[0, :, 0].tolist() == [0, 128, 255]
    rgb16 = np.full((1, 1, 3), 65535, np.uint16)
    assert to_rgb_uint8(rgb16).tolist() == [[[255, 255, 255]]]
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


def test_png_variants(tmp_path: Path) -> None:
    from PIL import Image

    gray16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    with open_slide(tmp_path / "g16.png") as r:
        out = r.read_region(0, 0, 0, 8, 8)
    np.testing.assert_array_equal(
        out[..., 0], np.floor(gray16.astype(np.float64) * 255 / 65535 + 0.5)
    )
    assert (out[..., 0] == out[..., 2]).all()


def test_registered_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_patchgd.errors import StoreError
    from wsi_patchgd.readers import ImageReader, reader_names, register_reader, registry

    monkeypatch.setattr(registry, "_REGISTRY", {})  # this test's readers only
    png = _TILE[0]
    opened: list[str] = []

    def fake(source: str, storage_options: object) -> SlideReader:
        opened.append(source)
        if source.endswith("broken"):
            raise StoreError(f"{source}: fake store lacks its index; rebuild it")
        return ImageReader(png)

    register_reader("fake", fake, lambda src, so: (Path(src) / "fake.json").exists())
    assert reader_names() == ("auto", "openslide", "tifffile", "pillow", "fake")
    ours, other, broken = tmp_path / "ours", tmp_path / "other", tmp_path / "broken"
    for d in (ours, other, broken):
        d.mkdir()
    (ours / "fake.json").write_text("{}")
    (broken / "fake.json").write_text("{}")
    with open_slide(ours) as r:  # a directory the reader claims
        assert r.name == "pillow" and opened == [str(ours)]
    with open_slide(other, reader="fake") as r:  # named: no sniffing
        assert r.name == "pillow"
    with pytest.raises(SlideReadError, match="is a directory, not a slide"):
        open_slide(other)
    with pytest.raises(SlideReadError, match=r"broken: fake store lacks its index; rebuild it$"):
        open_slide(broken)  # the reader's own error, not "is a directory"
    with pytest.raises(SlideReadError, match=r"unknown reader 'nope'; choose one of .*'fake'"):
        open_slide(png, reader="nope")
    with pytest.raises(ValueError, match="taken by a built-in reader"):
        register_reader("tifffile", fake)
    with open_slide(png) as r:  # files still go to the built-in readers
        assert r.name == "pillow" and len(opened) == 3


@pytest.mark.parametrize(
    ("src", "reader"), [(CMU, "tifffile"), (CMU, "openslide"), (TCGA, "tifffile"), (KIDNEY, "auto")]
)
def test_read_region_chw_is_read_region_transposed(src: Path, reader: str) -> None:
    """The channel-first read (tile by tile for tiled TIFF) gives exactly read_region's pixels,
    inside the image, across tile edges and past the image's edge (white)."""
    with open_slide(str(src), reader=reader) as r:
        w, h = r.levels[0].width, r.levels[0].height
        regions = [(0, 0, 0, 300, 200), (0, 250, 130, 517, 389), (0, w - 100, h - 50, 300, 200)]
        regions += [(len(r.levels) - 1, 0, 0, r.levels[-1].width, r.levels[-1].height)]
        for level, x, y, rw, rh in regions:
            chw = r.read_region_chw(level, x, y, rw, rh)
            assert chw.shape == (3, rh, rw) and chw.flags.c_contiguous and chw.dtype == np.uint8
            ref = r.read_region(level, x, y, rw, rh).transpose(2, 0, 1)
            np.testing.assert_array_equal(chw, ref, err_msg=str((level, x, y)))


def test_read_region_chw_of_a_corrupt_tile_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad-tile.svs"
    data = bytearray(CMU.read_bytes())
    with tifffile.TiffFile(CMU) as t:
        page = t.pages[0]
        off = int(page.dataoffsets[5])
        tw = int(page.tilewidth)
    data[off : off + 16] = bytes(16)  # the tile's JPEG header gone
    bad.write_bytes(bytes(data))
    with open_slide(str(bad), reader="tifffile") as r:
        with pytest.raises(SlideReadError, match="bad-tile.svs.*level 0"):
            r.read_region_chw(0, 5 * tw, 0, tw, tw)
