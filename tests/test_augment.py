"""Per-image augmentation: whole-image and patch-wise views agree exactly, through the engine."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from tests.conftest import CMU
from wsi_patchgd.augment import (
    Augmentation,
    AugmentConfig,
    AugmentedSource,
    hed_jitter,
    hed_to_rgb,
    rgb_to_hed,
)
from wsi_patchgd.data import StorePatchSource
from wsi_patchgd.engine import TensorPatchSource, build_patchgd_model, fill_latent, load_image
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.sampling import PatchGrid
from wsi_patchgd.store import ConvertOptions, convert_slide

P = 8
N_H, N_W = 3, 5
JITTER = (0.9, 1.1, 1.05, 0.03, -0.02, 0.01)
SPATIAL = list(itertools.product([False, True], [False, True], range(4)))


def _image(seed: int = 0, n_h: int = N_H, n_w: int = N_W, p: int = P) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, n_h * p, n_w * p), generator=g, dtype=torch.uint8)


def _tissue(seed: int = 1) -> np.ndarray:
    mask = np.random.default_rng(seed).random((N_H, N_W)) < 0.6
    mask[0, 0] = True
    return mask


def _stitch(patches: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Row-major patches of ``grid`` -> the whole image (as ``load_image`` does)."""
    p = grid.patch_size
    tiles = patches.reshape(grid.n_h, grid.n_w, 3, p, p).permute(2, 0, 3, 1, 4)
    return tiles.reshape(3, grid.n_h * p, grid.n_w * p)


class OrderedSource(TensorPatchSource):
    """An in-memory source that stores column-major and records prefetch announcements."""

    def __init__(self, images: list[torch.Tensor], patch_size: int) -> None:
        super().__init__(images, patch_size)
        self.announced: list[tuple[int, np.ndarray]] = []
        self.cancelled = 0
        self.levels = [0] * len(images)

    def storage_order(self, image: int, indices: np.ndarray) -> np.ndarray:
        rows, cols = self.grid(image).coords(indices)
        return np.asarray(indices, np.int64)[np.lexsort((rows, cols))]

    def prefetch(self, requests: list[tuple[int, np.ndarray]]) -> None:
        self.announced.extend(requests)

    def cancel_prefetch(self) -> None:
        self.cancelled += 1


@pytest.mark.parametrize(("flip_h", "flip_v", "rot90"), SPATIAL)
@pytest.mark.parametrize("hed", [Augmentation().hed, JITTER])
def test_patches_at_augmented_cells_stitch_to_the_augmented_image(
    flip_h: bool, flip_v: bool, rot90: int, hed: tuple[float, ...]
) -> None:
    image = _image()
    base = TensorPatchSource([image], P)
    aug = Augmentation(flip_h, flip_v, rot90, hed)
    grid = aug.grid(base.grid(0))
    idx = np.arange(grid.n_patches)
    patches = aug.apply_patches(base.read(0, aug.source_indices(base.grid(0), idx)))
    expected = aug.apply_image(image)
    assert expected.shape == (3, grid.n_h * P, grid.n_w * P)
    assert torch.equal(_stitch(patches, grid), expected)
    assert sorted(aug.source_indices(base.grid(0), idx).tolist()) == idx.tolist()


@pytest.mark.parametrize(("flip_h", "flip_v", "rot90"), SPATIAL)
def test_tissue_and_fractions_move_with_their_patches(
    flip_h: bool, flip_v: bool, rot90: int
) -> None:
    tissue = _tissue()
    fractions = np.random.default_rng(2).random((N_H, N_W))
    grid = PatchGrid(P, tissue, fractions)
    aug = Augmentation(flip_h, flip_v, rot90)
    out = aug.grid(grid)
    src = aug.source_indices(grid, np.arange(out.n_patches))
    np.testing.assert_array_equal(out.tissue.ravel(), tissue.ravel()[src])
    assert out.fractions is not None
    np.testing.assert_array_equal(out.fractions.ravel(), fractions.ravel()[src])
    # The mask drawn as an image and transformed as an image gives the same grid.
    mask_image = torch.from_numpy(np.kron(tissue, np.ones((P, P))).astype(np.uint8))
    moved = aug.apply_image(mask_image.expand(3, -1, -1))
    np.testing.assert_array_equal(moved[0, ::P, ::P].numpy().astype(bool), out.tissue)
    assert out.n_tissue == grid.n_tissue


def test_odd_quarter_turns_swap_the_grid_shape() -> None:
    grid = PatchGrid(P, np.ones((N_H, N_W), bool))
    for k in range(4):
        shape = Augmentation(rot90=k).grid(grid).shape
        assert shape == ((N_W, N_H) if k % 2 else (N_H, N_W))
    image = _image()
    assert Augmentation(rot90=1).apply_image(image).shape == (3, N_W * P, N_H * P)
    # One counter-clockwise turn: the top-right patch becomes the top-left one.
    assert Augmentation(rot90=1).source_indices(grid, np.array([0])).tolist() == [N_W - 1]


def test_identity_changes_nothing() -> None:
    ident = Augmentation.identity()
    assert ident.is_identity and ident == Augmentation()
    image = _image()
    grid = PatchGrid(P, _tissue())
    assert torch.equal(ident.apply_image(image), image)
    assert torch.equal(ident.apply_patches(image[None]), image[None])
    assert ident.grid(grid) is grid
    assert ident.source_indices(grid, np.arange(15)).tolist() == list(range(15))
    base = TensorPatchSource([image], P, [grid.tissue])
    src = AugmentedSource(base, {0: ident})
    assert src.grid(0) is base.grid(0)
    assert torch.equal(load_image(src, 0), image)
    assert not Augmentation(rot90=2).is_identity and not Augmentation(hed=JITTER).is_identity


def test_invalid_draws_are_rejected() -> None:
    with pytest.raises(ConfigError):
        Augmentation(rot90=4)
    with pytest.raises(ConfigError):
        Augmentation(hed=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        AugmentConfig(hed_sigma=-0.1)


def test_hed_matches_skimage_and_round_trips() -> None:
    rgb = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hed = rgb_to_hed(rgb)
    ref = rgb2hed(rgb.permute(0, 2, 3, 1).numpy())  # skimage clips negative stains to 0
    np.testing.assert_allclose(hed.clamp_min(0).permute(0, 2, 3, 1).numpy(), ref, atol=1e-10)
    stains = hed.clamp_min(0)
    ref_rgb = hed2rgb(stains.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(hed_to_rgb(stains).permute(0, 2, 3, 1).numpy(), ref_rgb, atol=1e-10)
    torch.testing.assert_close(hed_to_rgb(hed), rgb, atol=1e-9, rtol=0)


def test_identity_jitter_round_trips_within_one_grey_level() -> None:
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    images = images.to(torch.uint8)
    out = hed_jitter(images, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert (out.int() - images.int()).abs().max() <= 1
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(3, 3, 16, 16)
    assert (hed_jitter(every, (1, 1, 1), (0, 0, 0)).int() - every.int()).abs().max() <= 1


def test_jitter_is_pixelwise_and_changes_colour() -> None:
    images = _image(seed=4, n_h=6, n_w=9)  # 54 patches: crosses the internal chunk size
    whole = hed_jitter(images, JITTER[:3], JITTER[3:])
    patches = images.unfold(1, P, P).unfold(2, P, P).permute(1, 2, 0, 3, 4).reshape(-1, 3, P, P)
    jittered = hed_jitter(patches, JITTER[:3], JITTER[3:])
    assert torch.equal(_stitch(jittered, PatchGrid(P, np.ones((6, 9), bool))), whole)
    assert torch.equal(hed_jitter(patches[:5], JITTER[:3], JITTER[3:]), jittered[:5])
    assert (whole.int() - images.int()).abs().float().mean() > 1.0


def test_draw_is_reproducible_and_varies() -> None:
    config = AugmentConfig(hed_sigma=0.05)
    first = [config.draw(np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    draws = [config.draw(rng_a) for _ in range(64)]
    assert draws == [config.draw(rng_b) for _ in range(64)]
    assert len({(d.flip_h, d.flip_v, d.rot90) for d in draws}) == 16
    assert len({d.hed for d in draws}) == 64
    alphas, betas = np.array([d.hed[:3] for d in draws]), np.array([d.hed[3:] for d in draws])
    assert np.all(np.abs(alphas - 1) <= 0.05) and np.all(np.abs(betas) <= 0.05)
    plain = AugmentConfig()
    assert plain.enabled and all(plain.draw(rng_a).color_identity for _ in range(8))
    off = AugmentConfig(flips=False, rot90=False)
    assert not off.enabled and off.draw(rng_a).is_identity
    assert AugmentConfig(flips=False, rot90=False, hed_sigma=0.1).enabled
    src = AugmentedSource.draw(
        TensorPatchSource([_image()], P), [0], config, np.random.default_rng(7)
    )
    assert src.augmentation(0) == first[0]


@pytest.mark.parametrize(
    "augmentation", [Augmentation(True, False, 1, JITTER), Augmentation(rot90=3)]
)
def test_gd_load_image_sees_the_augmented_image(augmentation: Augmentation) -> None:
    images = [_image(seed=0), _image(seed=1, n_h=2, n_w=4)]
    base = TensorPatchSource(images, P, [_tissue(), np.ones((2, 4), bool)])
    src = AugmentedSource(base, {0: augmentation})
    assert torch.equal(load_image(src, 0), augmentation.apply_image(images[0]))
    assert torch.equal(load_image(src, 1), images[1])  # not in the dict: unchanged
    assert len(src) == 2 and src.patch_size == P and src.base is base
    assert src.grid(0) is src.grid(0)  # cached
    np.testing.assert_array_equal(src.grid(0).tissue, augmentation.grid(base.grid(0)).tissue)


def test_storage_order_prefetch_and_attributes_go_through_the_base() -> None:
    base = OrderedSource([_image(), _image(seed=1)], P)
    aug = Augmentation(flip_h=True, rot90=1)
    src = AugmentedSource(base, {0: aug})
    grid0 = base.grid(0)
    idx = np.array([0, 3, 7, 8, 14])
    order = src.storage_order(0, idx)
    assert sorted(order.tolist()) == idx.tolist()
    src_idx = aug.source_indices(grid0, order)
    np.testing.assert_array_equal(src_idx, base.storage_order(0, src_idx))
    np.testing.assert_array_equal(src.storage_order(1, idx), base.storage_order(1, idx))
    src.prefetch([(0, idx), (1, idx)])
    np.testing.assert_array_equal(base.announced[0][1], aug.source_indices(grid0, idx))
    np.testing.assert_array_equal(base.announced[1][1], idx)
    src.cancel_prefetch()
    assert base.cancelled == 1 and src.levels == [0, 0]
    with pytest.raises(AttributeError):
        _ = src.no_such_attribute
    # Without a base storage order: ascending source index, as augmented-grid indices.
    plain = AugmentedSource(TensorPatchSource([_image()], P), {0: aug})
    got = aug.source_indices(grid0, plain.storage_order(0, idx))
    assert got.tolist() == sorted(aug.source_indices(grid0, idx).tolist())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> str:
    dest = tmp_path_factory.mktemp("augment") / "cmu.zarr"
    opts = ConvertOptions(patch_size=64, shard_patches=4, min_level_size=256)
    assert convert_slide(str(CMU), str(dest), opts).status == "ok"
    return str(dest)


def test_store_source_prefetch_and_storage_order(store: str) -> None:
    base = StorePatchSource([store], level=0, lookahead=16)
    aug = Augmentation(flip_v=True, rot90=1, hed=JITTER)
    src = AugmentedSource(base, {0: aug})
    grid = src.grid(0)
    assert grid.shape == base.grid(0).shape[::-1] and grid.n_tissue == base.grid(0).n_tissue
    assert src.store(0) is base.store(0) and src.levels == [0]
    order = src.storage_order(0, grid.tissue_indices())
    assert sorted(order.tolist()) == grid.tissue_indices().tolist()
    src_order = aug.source_indices(base.grid(0), order)
    np.testing.assert_array_equal(src_order, base.storage_order(0, src_order))
    requests = [(0, order[i : i + 7]) for i in range(0, 70, 7)]
    src.prefetch(requests)
    direct = StorePatchSource([store], level=0)
    for image, idx in requests:
        expected = aug.apply_patches(direct.read(image, aug.source_indices(base.grid(0), idx)))
        assert torch.equal(src.read(image, idx), expected)
    assert not base._pending  # every announced read was served from the prefetch
    src.cancel_prefetch()


def test_fill_writes_flipped_features_at_mirrored_cells() -> None:
    torch.manual_seed(0)
    p = 16
    image = _image(seed=5, p=p)
    tissue = _tissue()
    base = TensorPatchSource([image], p, [tissue])
    src = AugmentedSource(base, {0: Augmentation(flip_h=True)})
    model = build_patchgd_model("resnet18", 2, out_dim=8).eval()
    latent = fill_latent(model, src, [0], batch_size=4)
    assert latent.patches == int(tissue.sum())
    np.testing.assert_array_equal(latent.background[0].numpy(), ~tissue[:, ::-1])
    with torch.no_grad():
        for r, c in zip(*np.nonzero(tissue), strict=True):
            patch = torch.flip(base.read(0, np.array([r * N_W + c])), dims=(-1,))
            feat = model.embed(patch)[0]
            torch.testing.assert_close(latent.z[0, :, r, N_W - 1 - c], feat, atol=1e-5, rtol=1e-4)
