"""Tissue detection on the real labelled tiles and thumbnails, and exact patch fractions.

The tiles in ``<data>/tiles`` carry their label in the file name (see the data README):
``tissue-*`` and ``*-nuclei-score-*`` contain tissue, ``no-tissue*`` hold none, ``almost-white-*``
are glass with a sliver of tissue at most, ``*-pen*`` carry marker ink and ``no-tissue-line`` is a
glass edge. Every tile found by the glob is checked against a range of tissue fractions; the
ranges come from looking at the tiles (the comments of ``EXPECTED`` say what each tile shows), and
a new file is checked against the default range of its name's pattern. Run with ``pytest -s`` to
see the per-tile table of fractions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from wsi_patchgd.tissue import (
    TissueParams,
    detect_tissue,
    patch_tissue_fractions,
    tissue_fraction,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO.parent / "shared" / "data"))
TILES = DATA / "tiles"
THUMBNAILS = DATA / "thumbnails"

# Tiles that hold tissue: at least this fraction must be detected. Every default-rule tissue
# tile is tissue over most of its area (the least covered, tissue-level2-*, are ~75-80 %
# tissue by eye); the adipose tiles (low-nuclei-score-level0/1) are fat, whose cells are
# optically empty lipid vacuoles framed by faint membranes, so 0.3 leaves room for those.
TISSUE_MIN = 0.3
# Glass-only tiles and pen marks or a glass edge on glass: (almost) nothing.
NO_TISSUE_MAX = 0.05
# "Almost white" tiles: glass with at most a sliver of tissue. almost-white-2 carries a real
# tissue sliver in its top-right corner (about 4-5 % of the tile by eye), so the bar is 0.10.
ALMOST_WHITE_MAX = 0.10

# Per-tile ranges (lo, hi) where the name's pattern alone does not say what the tile shows.
EXPECTED: dict[str, tuple[float, float]] = {
    # Tissue only as a band along the top edge (about 15 % of the tile); the rest is glass.
    "high-nuclei-score-level2.png": (0.08, 0.30),
    # Dense tissue everywhere, with a red ink smear and a dark fold line across it.
    "high-nuclei-score-red-pen-level1.png": (0.60, 1.00),
    # Green ink covers the upper half; tissue and fat are visible in the lower half.
    "medium-nuclei-score-green-pen-level1.png": (0.15, 0.60),
    # Fat under blurred red ink over about half the tile: the uninked fat counts.
    "very-low-nuclei-score-red-pen-level1.png": (0.10, 0.70),
    # Glass on the upper third (only wisps of loose tissue), a thick tissue band below it.
    "medium-nuclei-score-level1.png": (0.45, 0.90),
    # Tissue with a triangle of glass in the lower right corner.
    "medium-nuclei-score-level2.png": (0.60, 0.92),
}


def expected_range(name: str) -> tuple[float, float]:
    """The allowed tissue-fraction range of a tile, from EXPECTED or its name's pattern."""
    if name in EXPECTED:
        return EXPECTED[name]
    if name.startswith("no-tissue"):  # glass, glass edge, pen on glass
        return (0.0, NO_TISSUE_MAX)
    if name.startswith("almost-white"):
        return (0.0, ALMOST_WHITE_MAX)
    if "-pen" in name:
        raise AssertionError(
            f"{name}: a pen tile that is not no-tissue-*; look at it and add it to EXPECTED"
        )
    if name.startswith("tissue-") or "-nuclei-score-" in name:
        return (TISSUE_MIN, 1.0)
    raise AssertionError(f"{name}: no label in the file name; add it to EXPECTED")


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _params(folder: Path) -> list[object]:
    files = _pngs(folder)
    if not files:  # reported by test_data_present
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no images in {folder}"))]
    return [pytest.param(f, id=f.name) for f in files]


def _load(path: Path) -> np.ndarray:
    """The image as stored (the tiles are RGBA: this exercises the compositing too)."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            return np.asarray(im)
        return np.asarray(im.convert("RGBA"))


@pytest.fixture(scope="session")
def tile_fractions() -> Iterator[dict[str, float]]:
    """Tissue fraction of every tile and thumbnail, computed once; prints the table."""
    fractions: dict[str, float] = {}
    lines = [
        "",
        f"{'image':<48} {'size':>10} {'fraction':>9} {'expected':>13} {'time':>7}",
    ]
    for path in _pngs(TILES) + _pngs(THUMBNAILS):
        rgb = _load(path)
        t0 = time.perf_counter()
        frac = tissue_fraction(rgb)
        dt = time.perf_counter() - t0
        key = f"{path.parent.name}/{path.name}"
        fractions[key] = frac
        if path.parent == TILES:
            try:
                lo, hi = expected_range(path.name)
                exp = f"[{lo:.2f}, {hi:.2f}]"
                exp += "" if lo <= frac <= hi else " FAIL"
            except AssertionError:
                exp = "unlabelled"
        else:
            exp = "(0, 1)"
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        lines.append(f"{key:<48} {size:>10} {frac:>9.3f} {exp:>13} {dt * 1000:>5.0f}ms")
    print("\n".join(lines))
    yield fractions


def test_data_present() -> None:
    if not _pngs(TILES) or not _pngs(THUMBNAILS):
        pytest.fail(
            f"test images not found under {DATA} (tiles/, thumbnails/); set "
            "WSI_PATCHGD_TEST_DATA to the shared/data folder"
        )


@pytest.mark.parametrize("path", _params(TILES))
def test_tile_fraction_matches_label(path: Path, tile_fractions: dict[str, float]) -> None:
    frac = tile_fractions[f"tiles/{path.name}"]
    lo, hi = expected_range(path.name)
    assert lo <= frac <= hi, f"{path.name}: tissue fraction {frac:.3f} not in [{lo}, {hi}]"


@pytest.mark.parametrize("path", _params(THUMBNAILS))
def test_thumbnail_fraction_strictly_between_0_and_1(
    path: Path, tile_fractions: dict[str, float]
) -> None:
    frac = tile_fractions[f"thumbnails/{path.name}"]
    assert 0.0 < frac < 1.0, f"{path.name}: tissue fraction {frac:.3f}"


def _ink_pixels(rgb: np.ndarray, kind: str) -> np.ndarray:
    """Pixels whose colour is marker ink beyond doubt (never H&E: checked on the tissue tiles).

    Green or blue ink: green or blue exceeds red clearly (eosin and hematoxylin are red-heavy
    or purple). Red ink: red exceeds green and blue by more than 130 (eosin by 20-60).
    """
    c = rgb[..., :3].astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    if kind == "red":
        return (r - np.maximum(g, b)) > 130
    return ((g - r) > 30) | ((b - r) > 80)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("thumbnails/wsi-blue-pen.png", "green-blue"),
        ("thumbnails/tcga-green-pen.png", "green-blue"),
        ("thumbnails/diagnostic-slide-thumb-rgb.png", "green-blue"),
        ("thumbnails/diagnostic-slide-thumb-rgb.png", "red"),
        ("thumbnails/tcga-red-pen.png", "red"),
        ("tiles/no-tissue-red-pen.png", "red"),
        ("tiles/very-low-nuclei-score-red-pen-level1.png", "red"),
        ("tiles/medium-nuclei-score-green-pen-level1.png", "green-blue"),
    ],
)
def test_ink_is_not_tissue(name: str, kind: str) -> None:
    """On real images with pen marks, (almost) no ink-coloured pixel is in the mask."""
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"{path} not found; set WSI_PATCHGD_TEST_DATA")
    rgba = _load(path)
    ink = _ink_pixels(rgba, kind)
    assert ink.sum() > 100, f"{name}: expected {kind} ink pixels in this image"
    leaked = np.count_nonzero(detect_tissue(rgba) & ink) / np.count_nonzero(ink)
    assert leaked < 0.01, f"{name}: {leaked:.2%} of the {kind} ink pixels are in the mask"


def test_ink_criterion_does_not_flag_stain() -> None:
    """The ink colour criterion of test_ink_is_not_tissue stays off H&E tissue tiles."""
    for path in _pngs(TILES):
        if path.name.startswith("tissue-"):
            rgba = _load(path)
            for kind in ("red", "green-blue"):
                assert _ink_pixels(rgba, kind).mean() < 0.001, (path.name, kind)


def test_mask_is_bool_and_same_size() -> None:
    path = TILES / "tissue-level0-7352-11762-7864-12274.png"
    if not path.is_file():
        pytest.fail(f"{path} not found; set WSI_PATCHGD_TEST_DATA")
    rgba = _load(path)
    mask = detect_tissue(rgba)
    assert mask.dtype == np.bool_
    assert mask.shape == rgba.shape[:2]


# --- synthetic images -------------------------------------------------------------------------


def test_pure_white_is_no_tissue() -> None:
    white = np.full((300, 400, 3), 255, dtype=np.uint8)
    assert not detect_tissue(white).any()
    assert tissue_fraction(white) == 0.0


def test_pure_black_is_no_tissue() -> None:
    black = np.zeros((64, 64, 3), dtype=np.uint8)
    assert tissue_fraction(black) == 0.0


@pytest.mark.parametrize(
    "colour",
    [
        pytest.param((236, 160, 200), id="eosin-pink"),
        pytest.param((218, 128, 178), id="deep-pink"),
        pytest.param((150, 100, 170), id="hematoxylin-purple"),
        pytest.param((165, 115, 80), id="dab-brown"),
    ],
)
def test_uniform_stain_colour_is_tissue(colour: tuple[int, int, int]) -> None:
    img = np.empty((200, 300, 3), dtype=np.uint8)
    img[...] = colour
    assert tissue_fraction(img) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    assert tissue_fraction(noisy) >= 0.99


@pytest.mark.parametrize(
    "colour",
    [
        pytest.param((40, 160, 130), id="green-pen"),
        pytest.param((40, 90, 200), id="blue-pen"),
        pytest.param((20, 20, 25), id="black-pen"),
        pytest.param((235, 20, 40), id="red-pen"),
    ],
)
def test_uniform_ink_colour_is_not_tissue(colour: tuple[int, int, int]) -> None:
    img = np.empty((200, 300, 3), dtype=np.uint8)
    img[...] = colour
    assert tissue_fraction(img) == 0.0


def test_pink_disc_on_glass() -> None:
    yy, xx = np.mgrid[:400, :400]
    disc = (yy - 200) ** 2 + (xx - 200) ** 2 <= 100**2
    img = np.full((400, 400, 3), 245, dtype=np.uint8)
    img[disc] = (220, 140, 190)
    mask = detect_tissue(img)
    assert np.count_nonzero(mask ^ disc) <= 0.02 * disc.sum()


def test_tiny_specks_are_removed() -> None:
    img = np.full((500, 500, 3), 250, dtype=np.uint8)
    img[100:103, 100:103] = (220, 140, 190)  # 9 px < 0.1 % of the image
    assert tissue_fraction(img) == 0.0


def test_saturation_floor_keeps_glass_noise_out() -> None:
    """On glass alone, Otsu splits the noise; the floor keeps it from becoming tissue."""
    rng = np.random.default_rng(0)
    glass = np.clip(228 + rng.normal(0, 2.5, (300, 300, 3)), 0, 255).astype(np.uint8)
    assert tissue_fraction(glass) == 0.0
    no_floor = TissueParams(saturation_floor=0.0, saturation_ceiling=1.0)
    assert tissue_fraction(glass, no_floor) > 0.5  # what the floor prevents


def test_saturation_ceiling_keeps_pale_tissue() -> None:
    """With strong and pale stain apart, Otsu splits the stains; the ceiling keeps both."""
    img = np.empty((100, 300, 3), dtype=np.uint8)
    img[:] = (230, 150, 200)  # eosin
    img[:, 100:200] = 250  # glass between
    img[:, 200:] = (235, 205, 222)  # pale stain (saturation 0.13)
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    mask = detect_tissue(img)
    assert mask[:, :100].all() and mask[:, 200:].all() and not mask[:, 100:200].any()
    no_ceiling = detect_tissue(img, TissueParams(saturation_ceiling=1.0))
    assert not no_ceiling[:, 200:].any()  # what the ceiling prevents


def test_params_take_effect() -> None:
    green = np.empty((50, 50, 3), dtype=np.uint8)
    green[...] = (60, 170, 120)
    assert tissue_fraction(green) == 0.0
    all_hues = TissueParams(stain_hue_ranges=((0.0, 360.0),))
    assert tissue_fraction(green, all_hues) == pytest.approx(1.0)


# --- RGBA and input validation ----------------------------------------------------------------


def test_rgba_fully_transparent_is_no_tissue() -> None:
    rgba = np.zeros((120, 80, 4), dtype=np.uint8)
    rgba[..., :3] = (150, 100, 170)  # stain colour, but alpha = 0
    assert tissue_fraction(rgba) == 0.0


def test_rgba_opaque_equals_rgb() -> None:
    rng = np.random.default_rng(1)
    rgb = np.empty((100, 100, 3), dtype=np.uint8)
    rgb[...] = (220, 140, 190)
    rgb[:, 50:] = 250
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((100, 100, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(detect_tissue(rgba), detect_tissue(rgb))


def test_rgba_is_composited_on_white() -> None:
    rgb = np.empty((64, 64, 3), dtype=np.uint8)
    rgb[...] = (120, 40, 110)
    alpha = np.linspace(0, 255, 64).astype(np.uint8)[None, :].repeat(64, axis=0)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)
    a = alpha[..., None] / 255.0
    composited = np.clip(np.rint(rgb * a + 255.0 * (1 - a)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(detect_tissue(rgba), detect_tissue(composited))
    # Nearly transparent columns are glass, opaque ones are stain.
    mask = detect_tissue(rgba)
    assert not mask[:, :3].any()
    assert mask[:, -10:].all()


@pytest.mark.parametrize(
    ("array", "match"),
    [
        pytest.param(np.zeros((10, 10), np.uint8), "shape", id="2d"),
        pytest.param(np.zeros((10, 10, 2), np.uint8), "shape", id="2-channels"),
        pytest.param(np.zeros((10, 10, 5), np.uint8), "shape", id="5-channels"),
        pytest.param(np.zeros((3, 10, 10), np.uint8), "shape", id="chw"),
        pytest.param(np.zeros((0, 10, 3), np.uint8), "empty", id="empty"),
        pytest.param(np.zeros((10, 10, 3), np.float32), "uint8", id="float"),
        pytest.param(np.zeros((10, 10, 3), np.uint16), "uint8", id="uint16"),
    ],
)
def test_bad_input_raises(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_tissue(array)
    with pytest.raises(ValueError, match=match):
        tissue_fraction(array)


def test_bad_params_type_raises() -> None:
    with pytest.raises(ValueError, match="TissueParams"):
        detect_tissue(np.zeros((4, 4, 3), np.uint8), {"method": "hsv-otsu"})  # type: ignore[arg-type]


# --- TissueParams -----------------------------------------------------------------------------


def test_params_round_trip_defaults() -> None:
    p = TissueParams()
    d = p.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(TissueParams)}
    assert TissueParams.from_dict(d) == p
    assert TissueParams.from_dict(json.loads(json.dumps(d))) == p


def test_params_round_trip_custom() -> None:
    p = TissueParams(
        saturation_floor=0.03,
        saturation_ceiling=0.2,
        use_otsu=False,
        stain_hue_ranges=((250.0, 360.0), (0.0, 30.0), (100.0, 110.0)),
        red_pen_hue_range=(350.0, 10.0),
        closing_radius=0,
        opening_radius=3,
        pen_halo_ratio=0.0,
        max_hole_fraction=0.0,
    )
    text = json.dumps(p.to_dict())
    q = TissueParams.from_dict(json.loads(text))
    assert q == p
    assert q.stain_hue_ranges == ((250.0, 360.0), (0.0, 30.0), (100.0, 110.0))
    assert isinstance(q.red_pen_hue_range, tuple)
    assert hash(q) == hash(p)


def test_params_from_partial_dict_uses_defaults() -> None:
    p = TissueParams.from_dict({"saturation_floor": 0.05})
    assert p == dataclasses.replace(TissueParams(), saturation_floor=0.05)
    assert TissueParams.from_dict({}) == TissueParams()


def test_params_unknown_key_names_the_key() -> None:
    with pytest.raises(ValueError, match="saturation_flor"):
        TissueParams.from_dict({"saturation_flor": 0.1})


def test_params_are_frozen() -> None:
    p = TissueParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.saturation_floor = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "magic"}, "method"),
        ({"saturation_floor": 0.3, "saturation_ceiling": 0.1}, "saturation_floor"),
        ({"saturation_floor": -0.1}, "saturation_floor"),
        ({"max_brightness": 1.5}, "max_brightness"),
        ({"dark_value": "0.3"}, "dark_value"),
        ({"use_otsu": 1}, "use_otsu"),
        ({"closing_radius": -1}, "closing_radius"),
        ({"opening_radius": 1.5}, "opening_radius"),
        ({"pen_halo_ratio": -0.1}, "pen_halo_ratio"),
        ({"stain_hue_ranges": ((0.0, 400.0),)}, "stain_hue_ranges"),
        ({"stain_hue_ranges": ((0.0, 10.0, 20.0),)}, "stain_hue_ranges"),
        ({"stain_hue_ranges": "pink"}, "stain_hue_ranges"),
        ({"red_pen_hue_range": (350.0,)}, "red_pen_hue_range"),
    ],
)
def test_params_invalid_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TissueParams(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        TissueParams.from_dict(kwargs)


# --- patch_tissue_fractions -------------------------------------------------------------------


def brute_force_fractions(
    mask: np.ndarray, scale: float, patch_size: int, grid_shape: tuple[int, int]
) -> np.ndarray:
    """Per-patch mean of the mask, pixel by pixel: overlap of each mask pixel with each box."""
    side = patch_size * scale
    mh, mw = mask.shape
    out = np.zeros(grid_shape, dtype=np.float64)
    m = mask.astype(np.float64)
    for i in range(grid_shape[0]):
        y0, y1 = i * side, (i + 1) * side
        oy = np.array([max(0.0, min(r + 1.0, y1) - max(float(r), y0)) for r in range(mh)])
        for j in range(grid_shape[1]):
            x0, x1 = j * side, (j + 1) * side
            ox = np.array([max(0.0, min(c + 1.0, x1) - max(float(c), x0)) for c in range(mw)])
            out[i, j] = float(oy @ m @ ox) / (side * side)
    return out


SCALES = st.one_of(
    st.integers(1, 4).map(float),  # integer, mask finer than the level
    st.sampled_from([1 / 2, 1 / 3, 1 / 4, 1 / 16, 1 / 32]),  # integer downsample factors
    st.sampled_from([1.5, 2.5, 7 / 3, 0.75, 0.37, 3 / 7, 0.1]),  # fractional, > 1 and < 1
    st.floats(0.05, 3.0, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    mh=st.integers(1, 12),
    mw=st.integers(1, 12),
    scale=SCALES,
    patch_size=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_patch_fractions_match_brute_force(
    data: st.DataObject, mh: int, mw: int, scale: float, patch_size: int, seed: int
) -> None:
    side = patch_size * scale
    # A grid that covers the mask and may extend past it, kept small.
    need_h = max(1, int(np.ceil(mh / side)))
    need_w = max(1, int(np.ceil(mw / side)))
    n_h = data.draw(st.integers(1, min(need_h + 2, 12)), label="n_h")
    n_w = data.draw(st.integers(1, min(need_w + 2, 12)), label="n_w")
    mask = np.random.default_rng(seed).random((mh, mw)) < 0.5
    got = patch_tissue_fractions(mask, scale, patch_size, (n_h, n_w))
    want = brute_force_fractions(mask, scale, patch_size, (n_h, n_w))
    assert got.dtype == np.float32
    assert got.shape == (n_h, n_w)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@settings(max_examples=100, deadline=None)
@given(
    mh=st.integers(1, 40),
    mw=st.integers(1, 40),
    factor=st.sampled_from([1, 2, 4, 8]),
    patch_size=st.sampled_from([8, 16, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_patch_fractions_conserve_tissue(
    mh: int, mw: int, factor: int, patch_size: int, seed: int
) -> None:
    """When the grid covers the mask, sum(fraction * box area) is the mask's pixel count."""
    scale = 1.0 / factor
    side = patch_size * scale
    grid = (int(np.ceil(mh / side)), int(np.ceil(mw / side)))
    mask = np.random.default_rng(seed).random((mh, mw)) < 0.3
    got = patch_tissue_fractions(mask, scale, patch_size, grid).astype(np.float64)
    assert got.sum() * side * side == pytest.approx(mask.sum(), abs=1e-3)


def test_patch_fractions_all_true_mask_downsampled() -> None:
    # Mask 5 x 7, 4x coarser than the level; 8 px patches = 2 x 2 mask pixels.
    mask = np.ones((5, 7), dtype=bool)
    got = patch_tissue_fractions(mask, 0.25, 8, (4, 5))
    want = np.array(
        [
            [1.0, 1.0, 1.0, 0.5, 0.0],
            [1.0, 1.0, 1.0, 0.5, 0.0],
            [0.5, 0.5, 0.5, 0.25, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_patch_fractions_all_true_mask_finer_than_level() -> None:
    # Mask 10 x 10, 2.5 mask pixels per level pixel; 3 px patches = 7.5 mask pixels.
    mask = np.ones((10, 10), dtype=bool)
    got = patch_tissue_fractions(mask, 2.5, 3, (2, 3))
    third = 2.5 / 7.5
    want = np.array([[1.0, third, 0.0], [third, third * third, 0.0]])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_patch_fractions_fractional_edge_weighting() -> None:
    # One tissue pixel; a box covering it by 0.5 x 0.25 gets that area over the box area.
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = True
    # scale 0.75, patch 2 -> side 1.5: box (0, 0) covers [0, 1.5)^2, overlapping the pixel
    # [1, 2)^2 by 0.5 x 0.5; box (1, 1) covers [1.5, 3)^2, overlapping it by 0.5 x 0.5.
    got = patch_tissue_fractions(mask, 0.75, 2, (3, 3))
    q = 0.25 / 2.25
    want = np.array([[q, q, 0.0], [q, q, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_patch_fractions_non_square_and_empty_grid() -> None:
    mask = np.ones((3, 50), dtype=bool)
    got = patch_tissue_fractions(mask, 1.0, 10, (1, 6))
    np.testing.assert_allclose(got, [[0.3, 0.3, 0.3, 0.3, 0.3, 0.0]], atol=1e-7)
    assert patch_tissue_fractions(mask, 1.0, 10, (0, 6)).shape == (0, 6)


def test_patch_fractions_on_real_mask() -> None:
    path = THUMBNAILS / "tcga-red-pen.png"
    if not path.is_file():
        pytest.fail(f"{path} not found; set WSI_PATCHGD_TEST_DATA")
    mask = detect_tissue(_load(path))
    # The thumbnail as a 1/32 view of a level; 256 px patches = 8 x 8 mask pixels.
    grid = (-(-mask.shape[0] // 8), -(-mask.shape[1] // 8))
    got = patch_tissue_fractions(mask, 1 / 32, 256, grid)
    assert got.min() >= 0.0
    assert got.max() <= 1.0
    assert got.sum() * 64 == pytest.approx(mask.sum(), rel=1e-6)
    want = brute_force_fractions(mask[:40, :48], 1 / 32, 256, (5, 6))
    np.testing.assert_allclose(got[:5, :6], want, atol=2e-6)


@pytest.mark.parametrize(
    ("mask", "scale", "patch_size", "grid", "match"),
    [
        (np.ones((2, 2, 2), bool), 1.0, 4, (1, 1), "2-D"),
        (np.ones((2, 2), bool), 0.0, 4, (1, 1), "scale"),
        (np.ones((2, 2), bool), -1.0, 4, (1, 1), "scale"),
        (np.ones((2, 2), bool), float("nan"), 4, (1, 1), "scale"),
        (np.ones((2, 2), bool), float("inf"), 4, (1, 1), "scale"),
        (np.ones((2, 2), bool), 1.0, 0, (1, 1), "patch_size"),
        (np.ones((2, 2), bool), 1.0, 2.5, (1, 1), "patch_size"),
        (np.ones((2, 2), bool), 1.0, 4, (1, -1), "grid_shape"),
        (np.ones((2, 2), bool), 1.0, 4, (1,), "grid_shape"),
    ],
)
def test_patch_fractions_bad_arguments(
    mask: np.ndarray, scale: float, patch_size: int, grid: tuple[int, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        patch_tissue_fractions(mask, scale, patch_size, grid)


def test_hsv_matches_skimage_on_real_tiles() -> None:
    """The detector's fast HSV (integer case selection) is HSV: skimage's rgb2hsv agrees on
    every pixel of the real tiles (hue in degrees, up to float32 rounding)."""
    from skimage.color import rgb2hsv

    from wsi_patchgd.tissue.detect import _hsv

    paths = sorted(TILES.glob("*.png"))[:6]
    assert paths
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        hue, sat, val, bright = _hsv(rgb)
        ref = rgb2hsv(rgb)
        d = np.abs(hue / 360.0 - ref[..., 0])
        np.testing.assert_array_less(np.minimum(d, 1 - d), 1e-5)  # hue wraps at 360
        np.testing.assert_allclose(sat, ref[..., 1], atol=1e-6)
        np.testing.assert_allclose(val, ref[..., 2], atol=1e-6)
        np.testing.assert_allclose(bright, rgb.mean(axis=2) / 255.0, atol=1e-6)
        assert hue.min() >= 0 and hue.max() < 360


@pytest.mark.parametrize("radius", [1, 2, 4, 7])
def test_square_closing_and_opening_equal_scipy_filters(radius: int) -> None:
    """The shifted-OR square morphology equals scipy's maximum/minimum filters (edges
    replicated) on real masks and on noise of odd shapes."""
    from scipy import ndimage as ndi

    from wsi_patchgd.tissue.detect import _close, _open

    def ref(mask: np.ndarray, first: str) -> np.ndarray:
        size = 2 * radius + 1
        u = mask.view(np.uint8)
        a, b = (ndi.maximum_filter, ndi.minimum_filter)[:: 1 if first == "max" else -1]
        return b(a(u, size=size, mode="nearest"), size=size, mode="nearest").astype(bool)

    rng = np.random.default_rng(radius)
    masks = [rng.random((37, 91)) < 0.5, rng.random((5, 3)) < 0.3]
    masks += [detect_tissue(np.asarray(Image.open(p).convert("RGB"))) for p in _some_tiles()]
    for m in masks:
        np.testing.assert_array_equal(_close(m, radius), ref(m, "max"))
        np.testing.assert_array_equal(_open(m, radius), ref(m, "min"))


def _some_tiles() -> list[Path]:
    return sorted(TILES.glob("*pen*.png"))[:3]
