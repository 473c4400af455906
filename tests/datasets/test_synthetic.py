"""Tests of the synthetic slide generator (wsi_patchgd.datasets.synthetic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from skimage.color import rgb2hsv

from wsi_patchgd.datasets.synthetic import (
    SyntheticSlide,
    texture_tiles_from_slide,
    write_synthetic_slide,
)
from wsi_patchgd.datasets.synthetic.texture import procedural_texture
from wsi_patchgd.errors import ConfigError, SlideReadError, WsiPatchGDError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO_ROOT / ".." / "shared" / "data"))
CMU = DATA / "slides" / "cmu-1-small-region.svs"

HEIGHT, WIDTH, SEED = 2048, 3072, 7


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    path = tmp_path_factory.mktemp("synthetic") / "slide.tif"
    return write_synthetic_slide(path, HEIGHT, WIDTH, seed=SEED, label=1)


def _rgb(osr: openslide.OpenSlide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB pixels of a region; x, y at level 0, w, h at ``level``."""
    return np.asarray(osr.read_region((x, y), level, (w, h)).convert("RGB"))


def _level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


# ------------------------------------------------------------------------------------------
# format


def test_result_describes_the_file(slide: SyntheticSlide) -> None:
    assert slide.path.is_file()
    assert (slide.height, slide.width) == (HEIGHT, WIDTH)
    assert slide.levels == [(2048, 3072), (1024, 1536), (512, 768)]
    assert slide.label == 1
    assert slide.mpp == 0.5
    assert 0.3 <= slide.tissue_fraction <= 0.6
    assert len(slide.markers) == 3
    # nothing but the slide is left in the folder (no temporary file)
    assert [p.name for p in slide.path.parent.iterdir()] == [slide.path.name]


def test_openslide_and_tifffile_see_the_same_pyramid(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(slide.path) as osr:
        assert osr.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert osr.level_count == len(slide.levels) > 1
        assert [(h, w) for w, h in osr.level_dimensions] == slide.levels
        assert osr.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
    with tifffile.TiffFile(slide.path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(h, w, 3) for h, w in slide.levels]
        assert len(tif.pages) == len(slide.levels)  # successive pages, no SubIFDs
        for i, page in enumerate(tif.pages):
            assert isinstance(page, tifffile.TiffPage)
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
            assert page.subfiletype == (1 if i else 0)
            assert not page.subifds


def test_level0_openslide_pixels_equal_tifffile_decode(slide: SyntheticSlide) -> None:
    full = _level0(slide.path)
    with openslide.OpenSlide(slide.path) as osr:
        for y, x in [(512, 768), (1024, 2048), (HEIGHT - 256, WIDTH - 256)]:  # whole tiles
            region = _rgb(osr, 0, x, y, 256, 256)
            diff = np.abs(region.astype(int) - full[y : y + 256, x : x + 256].astype(int))
            assert diff.max() <= 1  # measured: 0 (both decode with libjpeg-turbo)
            assert diff.mean() < 0.01


def test_reduced_levels_look_like_downsampled_level0(slide: SyntheticSlide) -> None:
    full = _level0(slide.path).astype(np.float32)
    with tifffile.TiffFile(slide.path) as tif:
        for lv in (1, 2):
            f = 2**lv
            level = tif.series[0].levels[lv].asarray().astype(np.float32)
            down = full.reshape(HEIGHT // f, f, WIDTH // f, f, 3).mean(axis=(1, 3))
            assert np.abs(level - down).mean() < 10.0
            # block means (64 level-0 px) agree closely
            k = 64 // f
            b1 = level.reshape(HEIGHT // 64, k, WIDTH // 64, k, 3).mean(axis=(1, 3))
            b0 = down.reshape(HEIGHT // 64, k, WIDTH // 64, k, 3).mean(axis=(1, 3))
            assert np.abs(b1 - b0).mean() < 2.0


# ------------------------------------------------------------------------------------------
# content


def test_glass_is_near_white_and_tissue_is_stained(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(slide.path) as osr:
        corner = _rgb(osr, 0, 0, 0, 128, 128).astype(np.float32)  # glass margin
        assert corner.mean() > 235
        assert corner.std() < 6
        y0, x0, y1, x1 = slide.markers[0]
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        tissue = _rgb(osr, 0, cx - 512, cy - 512, 1024, 1024)
        assert tissue.astype(np.float32).mean() < 215
        assert rgb2hsv(tissue)[..., 1].mean() > 0.15
        # tissue coverage seen at level 2 agrees with the reported fraction
        thumb = _rgb(osr, 2, 0, 0, WIDTH // 4, HEIGHT // 4)
    stained = (rgb2hsv(thumb)[..., 1] > 0.1).mean()
    assert abs(stained - slide.tissue_fraction) < 0.1


def test_markers_lie_inside_the_image_and_inside_tissue(slide: SyntheticSlide) -> None:
    boxes = slide.markers
    with openslide.OpenSlide(slide.path) as osr:
        for y0, x0, y1, x1 in boxes:
            assert 0 <= y0 < y1 <= HEIGHT and 0 <= x0 < x1 <= WIDTH
            assert 288 <= y1 - y0 <= 384 and 288 <= x1 - x0 <= 384
            region = _rgb(osr, 0, x0, y0, x1 - x0, y1 - y0).astype(np.float32)
            glass = (region.min(axis=-1) > 235).mean()
            assert glass < 0.05
    for i, a in enumerate(boxes):  # no two markers overlap
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_label_changes_only_the_marker_regions(slide: SyntheticSlide, tmp_path: Path) -> None:
    other = write_synthetic_slide(tmp_path / "label0.tif", HEIGHT, WIDTH, seed=SEED, label=0)
    assert other.markers == slide.markers
    a, b = _level0(slide.path), _level0(other.path)
    changed = np.any(a != b, axis=-1)
    inside = np.zeros_like(changed)
    for y0, x0, y1, x1 in slide.markers:  # JPEG MCUs are 16 px: allow that much around
        inside[max(0, y0 - 16) : y1 + 16, max(0, x0 - 16) : x1 + 16] = True
    assert changed.any()
    assert not changed[~inside].any()
    for y0, x0, y1, x1 in slide.markers:
        assert changed[y0:y1, x0:x1].mean() > 0.2


def test_same_arguments_give_identical_bytes(slide: SyntheticSlide, tmp_path: Path) -> None:
    procedural_texture.cache_clear()  # regenerate everything
    again = write_synthetic_slide(tmp_path / "again.tif", HEIGHT, WIDTH, seed=SEED, label=1)
    assert again.path.read_bytes() == slide.path.read_bytes()
    assert again.markers == slide.markers
    assert again.tissue_fraction == slide.tissue_fraction


def test_other_seed_gives_another_slide(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tiles = [rng.integers(60, 200, (256, 256, 3), dtype=np.uint8) for _ in range(4)]
    a = write_synthetic_slide(tmp_path / "a.tif", 1024, 2048, seed=1, texture_tiles=tiles)
    b = write_synthetic_slide(tmp_path / "b.tif", 1024, 2048, seed=2, texture_tiles=tiles)
    assert a.path.read_bytes() != b.path.read_bytes()
    assert a.markers != b.markers
    assert a.levels == b.levels == [(1024, 2048), (512, 1024)]


def test_markers_are_placed_even_on_small_slides(tmp_path: Path) -> None:
    tiles = [np.full((256, 256, 3), (200, 120, 180), dtype=np.uint8)]
    for seed in range(6):
        s = write_synthetic_slide(
            tmp_path / f"{seed}.tif", 768, 1536, seed=seed, n_markers=2, texture_tiles=tiles
        )
        with openslide.OpenSlide(s.path) as osr:
            for y0, x0, y1, x1 in s.markers:
                region = _rgb(osr, 0, x0, y0, x1 - x0, y1 - y0)
                assert (region.min(axis=-1) > 235).mean() < 0.05  # tissue, not glass


# ------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label": 2}, "label"),
        ({"label": -1}, "label"),
        ({"label": True}, "label"),
        ({"label": 3, "n_classes": 3}, "label"),
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 2.0}, "n_classes"),
        ({"n_markers": 0}, "n_markers"),
        ({"tile": 100}, "tile"),
        ({"tile": 32}, "tile"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"seed": -1}, "seed"),
        ({"height": 100}, "height"),
        ({"width": 10**7}, "width"),
        ({"texture_tiles": []}, "texture_tiles"),
        ({"texture_tiles": [np.zeros((256, 256, 3), np.float32)]}, "texture_tiles"),
        ({"texture_tiles": [np.zeros((100, 256, 3), np.uint8)]}, "texture_tiles"),
    ],
)
def test_invalid_arguments_raise_config_error(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"height": 1024, **kwargs}
    height = args.pop("height")
    with pytest.raises(ConfigError, match=match) as info:
        write_synthetic_slide(tmp_path / "bad.tif", height, **args)  # type: ignore[arg-type]
    assert isinstance(info.value, WsiPatchGDError)
    assert not any(tmp_path.iterdir())  # nothing written


def test_markers_that_cannot_fit_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_markers"):
        write_synthetic_slide(tmp_path / "tiny.tif", 512, n_markers=40)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------
# real texture


@pytest.fixture(scope="module")
def cmu_tiles() -> list[np.ndarray]:
    if not CMU.is_file():
        pytest.fail(f"test data missing: {CMU} (set WSI_PATCHGD_TEST_DATA)")
    return texture_tiles_from_slide(CMU, 8, tile=256, seed=0)


def test_texture_tiles_from_real_slide_are_tissue_rich(cmu_tiles: list[np.ndarray]) -> None:
    assert len(cmu_tiles) == 8
    for t in cmu_tiles:
        assert t.shape == (256, 256, 3) and t.dtype == np.uint8
        hsv = rgb2hsv(t)
        assert hsv[..., 1].mean() > 0.15
        assert (t.min(axis=-1) > 220).mean() < 0.2  # mostly not glass
    assert len({t.tobytes() for t in cmu_tiles}) == 8
    again = texture_tiles_from_slide(CMU, 8, tile=256, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(cmu_tiles, again, strict=True))


def test_texture_tiles_from_slide_errors(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="not found"):
        texture_tiles_from_slide(tmp_path / "missing.svs", 4)
    broken = DATA / "slides" / "broken.svs"
    if broken.is_file():
        with pytest.raises(SlideReadError):
            texture_tiles_from_slide(broken, 4)
    if CMU.is_file():
        with pytest.raises(ConfigError, match="fewer than"):
            texture_tiles_from_slide(CMU, 10_000, tile=1024)
    with pytest.raises(ConfigError):
        texture_tiles_from_slide(CMU, 0)


def test_slide_textured_with_real_tiles(cmu_tiles: list[np.ndarray], tmp_path: Path) -> None:
    s = write_synthetic_slide(
        tmp_path / "real.tif", 2048, seed=3, label=1, texture_tiles=cmu_tiles, progress=True
    )
    tile_mean = np.mean([t.reshape(-1, 3).mean(axis=0) for t in cmu_tiles], axis=0)
    with openslide.OpenSlide(s.path) as osr:
        assert osr.level_count == 2
        for y0, x0, y1, x1 in s.markers:
            region = _rgb(osr, 0, x0, y0, x1 - x0, y1 - y0).reshape(-1, 3).astype(np.float32)
            # the markers keep the tissue's mean colour (what a thumbnail shows)
            assert np.abs(region.mean(axis=0) - tile_mean).max() < 30
    full = _level0(s.path)
    y, x = s.markers[0][0] // 256 * 256, s.markers[0][1] // 256 * 256
    assert full[y : y + 256, x : x + 256].std() > 20  # textured, not flat


# ------------------------------------------------------------------------------------------
# memory

_MEASURE = """
import json, resource, sys
from wsi_patchgd.datasets.synthetic import write_synthetic_slide
s = write_synthetic_slide(sys.argv[1], 16384, seed=5, label=1)
# VmHWM is the peak RSS of this process image; ru_maxrss may also count the RSS that the
# forking parent (pytest) had, so it is only the fallback
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
print(json.dumps({"rss_mb": peak, "levels": s.levels}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_memory_stays_bounded_for_a_16k_slide(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "big.tif")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["levels"][0] == [16384, 16384]
    assert result["rss_mb"] < 400
    with openslide.OpenSlide(tmp_path / "big.tif") as osr:
        assert osr.level_count == 5


def test_make_synthetic_cli_writes_slides_stores_and_manifest(tmp_path: Path) -> None:
    """`wsi-patchgd make-synthetic` through the real CLI: slides, labels, stores, manifest."""
    import subprocess
    import sys

    from wsi_patchgd.data.manifest import read_manifest

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_patchgd",
            "make-synthetic",
            "--out",
            str(tmp_path),
            "--n",
            "3",
            "--side",
            "1024",
            "--classes",
            "3",
            "--patch-size",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = read_manifest(str(tmp_path / "manifest.csv"), num_classes=3)
    assert [(x.label, x.fold) for x in rows] == [(0, 0), (1, 0), (2, 1)]
    labels = (tmp_path / "labels.csv").read_text().splitlines()
    assert labels[0] == "file,label,fold,markers" and len(labels) == 4
    with openslide.OpenSlide(str(tmp_path / "slides" / "slide002.tif")) as s:
        assert s.dimensions == (1024, 1024)
