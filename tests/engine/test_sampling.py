"""Patch grids and samplers: invariants as property tests, fallbacks and errors as examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.sampling import (
    AllPatchesSampler,
    PatchGrid,
    PermutationSampler,
    TissueWeightedSampler,
    build_sampler,
)

masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.bool_, shape)
)


def test_grid_properties_and_indices() -> None:
    tissue = np.array([[True, False, True, True, False], [False, True, False, False, True]])
    grid = PatchGrid(patch_size=32, tissue=tissue)
    assert (grid.n_h, grid.n_w, grid.shape, grid.n_tissue, grid.n_patches) == (2, 5, (2, 5), 5, 10)
    idx = grid.tissue_indices()
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [0, 2, 3, 6, 9])
    rows, cols = grid.coords(idx)
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(cols, [0, 2, 3, 1, 4])
    assert tissue[rows, cols].all()
    with pytest.raises(ValueError):
        grid.tissue[0, 0] = False  # the grid is immutable
    with pytest.raises(ConfigError, match="out of range"):
        grid.coords(np.array([10]))


@pytest.mark.parametrize("bad", [np.zeros((0, 3), bool), np.zeros(4, bool)])
def test_grid_rejects_bad_masks(bad: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="tissue"):
        PatchGrid(patch_size=16, tissue=bad)
    with pytest.raises(ConfigError, match="patch_size"):
        PatchGrid(patch_size=0, tissue=np.ones((2, 2), bool))


def test_from_fractions_threshold_and_fallbacks() -> None:
    fractions = np.array([[0.9, 0.1, 0.5], [0.0, 0.3, 0.49]])
    grid = PatchGrid.from_fractions(fractions, threshold=0.5, patch_size=16)
    np.testing.assert_array_equal(grid.tissue, fractions >= 0.5)
    assert grid.fractions is not None and grid.patch_size == 16
    # nothing passes: the best patches are kept
    best = PatchGrid.from_fractions(np.array([[0.1, 0.2], [0.2, 0.0]]), threshold=0.5)
    np.testing.assert_array_equal(best.tissue, [[False, True], [True, False]])
    # all zero: every patch
    empty = PatchGrid.from_fractions(np.zeros((2, 3)), threshold=0.5)
    assert empty.tissue.all()
    assert PatchGrid.full(3, 4, 8).n_tissue == 12


@settings(max_examples=60, deadline=None)
@given(tissue=masks, k=st.integers(1, 20), extra=st.integers(0, 5), seed=st.integers(0, 2**32))
def test_permutation_sampler_properties(tissue: np.ndarray, k: int, extra: int, seed: int) -> None:
    grid = PatchGrid(patch_size=8, tissue=tissue)
    n = grid.n_tissue
    cover = max(1, math.ceil(n / k))
    zeta = cover + extra
    plan = PermutationSampler().plan(grid, k, zeta, np.random.default_rng(seed))
    assert len(plan) == zeta
    for it in plan:
        assert it.dtype == np.int64 and it.size <= k
        assert np.unique(it).size == it.size  # distinct within one iteration
        assert tissue.ravel()[it].all()
        assert it.size == min(k, n) or (n > k and it.size == n % k)
    # the first ceil(n/k) iterations cover every tissue patch exactly once
    covered = np.concatenate(plan[:cover])
    np.testing.assert_array_equal(np.sort(covered), grid.tissue_indices())
    # reproducible from the generator state
    again = PermutationSampler().plan(grid, k, zeta, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))


@settings(max_examples=40, deadline=None)
@given(tissue=masks, k=st.integers(1, 20), zeta=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_all_and_weighted_samplers_properties(
    tissue: np.ndarray, k: int, zeta: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    fractions = rng.random(tissue.shape) * tissue
    grid = PatchGrid(patch_size=8, tissue=tissue, fractions=fractions)
    plan = AllPatchesSampler().plan(grid, k, zeta, rng)
    flat = np.concatenate(plan)
    per_pass = math.ceil(grid.n_patches / k)
    if zeta >= per_pass:  # storage order, every patch, background included
        np.testing.assert_array_equal(np.concatenate(plan[:per_pass]), np.arange(grid.n_patches))
    assert all(np.unique(it).size == it.size <= k for it in plan) and flat.max() < grid.n_patches
    state = rng.bit_generator.state
    weighted = TissueWeightedSampler().plan(grid, k, zeta, rng)
    positive = set(np.flatnonzero((fractions > 0).ravel() & tissue.ravel()).tolist())
    if not positive:  # all tissue fractions 0: uniform over the tissue
        positive = set(grid.tissue_indices().tolist())
    for it in weighted:
        assert np.unique(it).size == it.size == min(k, len(positive))
        assert set(it.tolist()) <= positive
    rng.bit_generator.state = state  # a checkpointed state replays the same plan
    replay = TissueWeightedSampler().plan(grid, k, zeta, rng)
    assert all(np.array_equal(a, b) for a, b in zip(weighted, replay, strict=True))


def test_weighted_sampler_follows_fractions() -> None:
    fractions = np.array([[0.9, 0.1, 0.0, 0.9]])
    grid = PatchGrid.from_fractions(fractions, threshold=0.05)
    plans = TissueWeightedSampler().plan(grid, 1, 2000, np.random.default_rng(0))
    counts = np.bincount(np.concatenate(plans), minlength=4)
    assert counts[2] == 0
    assert counts[0] > 5 * counts[1] and counts[3] > 5 * counts[1]


def test_permutation_with_fewer_patches_than_k_and_empty_grid() -> None:
    grid = PatchGrid(patch_size=8, tissue=np.array([[True, False], [True, False]]))
    plan = PermutationSampler().plan(grid, 5, 3, np.random.default_rng(1))
    assert all(np.array_equal(np.sort(it), [0, 2]) for it in plan)
    empty = PatchGrid(patch_size=8, tissue=np.zeros((2, 2), bool))
    assert all(
        it.size == 0 for it in PermutationSampler().plan(empty, 2, 2, np.random.default_rng())
    )


def test_build_sampler_and_errors() -> None:
    assert isinstance(build_sampler("permutation"), PermutationSampler)
    assert isinstance(build_sampler("all"), AllPatchesSampler)
    assert isinstance(build_sampler("tissue_weighted"), TissueWeightedSampler)
    with pytest.raises(ConfigError, match="all, permutation, tissue_weighted"):
        build_sampler("random")
    with pytest.raises(ConfigError, match="does not accept"):
        build_sampler("permutation", k=3)
    grid = PatchGrid.full(2, 2, 8)
    with pytest.raises(ConfigError, match="k=0"):
        PermutationSampler().plan(grid, 0, 1, np.random.default_rng())
    with pytest.raises(ConfigError, match="zeta=0"):
        AllPatchesSampler().plan(grid, 1, 0, np.random.default_rng())
