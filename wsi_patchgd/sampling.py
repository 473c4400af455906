"""Patch grids and the samplers that choose which patches an inner iteration recomputes.

A :class:`PatchGrid` is the non-overlapping ``P x P`` grid of one pyramid level, with one tissue
flag per patch. Patches are addressed by their flat row-major index ``row * n_w + col`` (storage
order). A :class:`Sampler` turns a grid into a *plan*: for each of the ``zeta`` inner iterations
of one batch, the flat indices of the (at most ``k``) patches to recompute with gradient.

Every sampler draws only from the ``numpy.random.Generator`` it is given, so the same generator
state gives the same plan; ``rng.bit_generator.state`` is a plain dict that checkpoints can store
and restore (``rng.bit_generator.state = saved``) to resume a run exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi_patchgd.errors import ConfigError

__all__ = [
    "AllPatchesSampler",
    "PatchGrid",
    "PermutationSampler",
    "SAMPLERS",
    "Sampler",
    "TissueWeightedSampler",
    "build_sampler",
]


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class PatchGrid:
    """The patch grid of one image at one level.

    Attributes:
        patch_size: Side ``P`` of a square patch, in pixels of the level.
        tissue: Boolean array of shape ``(n_h, n_w)``; ``True`` where the patch holds tissue.
        fractions: Optional float array of shape ``(n_h, n_w)``: the tissue fraction of each
            patch in ``[0, 1]`` (used by :class:`TissueWeightedSampler`).
    """

    patch_size: int
    tissue: np.ndarray
    fractions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if int(self.patch_size) < 1:
            raise ConfigError(f"patch_size={self.patch_size} must be a positive integer")
        tissue = np.asarray(self.tissue)
        if tissue.ndim != 2 or tissue.shape[0] < 1 or tissue.shape[1] < 1:
            raise ConfigError(
                f"PatchGrid tissue must be a non-empty 2-D (n_h, n_w) array, got shape "
                f"{tissue.shape}"
            )
        object.__setattr__(self, "patch_size", int(self.patch_size))
        object.__setattr__(self, "tissue", _readonly(tissue.astype(bool)))
        if self.fractions is not None:
            fractions = np.asarray(self.fractions, dtype=np.float64)
            if fractions.shape != tissue.shape:
                raise ConfigError(
                    f"PatchGrid fractions shape {fractions.shape} must equal tissue shape "
                    f"{tissue.shape}"
                )
            object.__setattr__(self, "fractions", _readonly(fractions))

    @property
    def n_h(self) -> int:
        """Number of patch rows."""
        return int(self.tissue.shape[0])

    @property
    def n_w(self) -> int:
        """Number of patch columns."""
        return int(self.tissue.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_h, n_w)``."""
        return (self.n_h, self.n_w)

    @property
    def n_patches(self) -> int:
        """Number of patches in the grid, background included."""
        return self.n_h * self.n_w

    @property
    def n_tissue(self) -> int:
        """Number of tissue patches."""
        return int(self.tissue.sum())

    def tissue_indices(self) -> np.ndarray:
        """Flat row-major indices of the tissue patches, in storage order.

        Returns:
            An int64 array of length :attr:`n_tissue`, increasing.
        """
        return np.flatnonzero(self.tissue.ravel()).astype(np.int64)

    def coords(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid cells of flat patch indices.

        Args:
            indices: Flat row-major patch indices.

        Returns:
            ``(rows, cols)``, two int64 arrays of the same length as ``indices``.

        Raises:
            ConfigError: If an index lies outside the grid.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_patches):
            raise ConfigError(
                f"patch index out of range for a {self.n_h}x{self.n_w} grid: "
                f"min {indices.min()}, max {indices.max()}"
            )
        rows, cols = np.divmod(indices, self.n_w)
        return rows.astype(np.int64), cols.astype(np.int64)

    @classmethod
    def from_fractions(
        cls, fractions: np.ndarray, threshold: float, patch_size: int = 256
    ) -> PatchGrid:
        """Grid whose tissue flags are ``fractions >= threshold``.

        Fallbacks, so that every image keeps at least one patch to learn from: if no patch
        reaches ``threshold``, the patches with the highest fraction are tissue (when that
        fraction is above 0); if every fraction is 0, every patch is tissue.

        Args:
            fractions: Tissue fraction per patch, shape ``(n_h, n_w)``, values in ``[0, 1]``.
            threshold: Minimum fraction for a patch to count as tissue.
            patch_size: Side of a patch in pixels.

        Returns:
            The grid, with ``fractions`` kept for :class:`TissueWeightedSampler`.
        """
        fractions = np.asarray(fractions, dtype=np.float64)
        tissue = fractions >= threshold
        if not tissue.any():
            best = float(fractions.max()) if fractions.size else 0.0
            tissue = fractions == best if best > 0 else np.ones_like(tissue)
        return cls(patch_size=patch_size, tissue=tissue, fractions=fractions)

    @classmethod
    def full(cls, n_h: int, n_w: int, patch_size: int) -> PatchGrid:
        """Grid of ``n_h x n_w`` patches that are all tissue (no tissue mask, e.g. UltraMNIST)."""
        return cls(patch_size=patch_size, tissue=np.ones((n_h, n_w), dtype=bool))


def _check_plan_args(k: int, zeta: int) -> None:
    if k < 1:
        raise ConfigError(f"k={k} patches per inner iteration must be >= 1")
    if zeta < 1:
        raise ConfigError(f"zeta={zeta} inner iterations must be >= 1")


class Sampler(ABC):
    """Chooses, for each inner iteration, which patches of one image are recomputed."""

    name: str = ""

    @abstractmethod
    def plan(
        self, grid: PatchGrid, k: int, zeta: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Patch indices for ``zeta`` inner iterations.

        Args:
            grid: The image's patch grid.
            k: Patches per inner iteration.
            zeta: Number of inner iterations.
            rng: Source of randomness; the same state gives the same plan.

        Returns:
            ``zeta`` int64 arrays of distinct flat patch indices, each of length ``<= k``.

        Raises:
            ConfigError: If ``k`` or ``zeta`` is smaller than 1.
        """


class PermutationSampler(Sampler):
    """A fresh random permutation of the tissue patches, consumed ``k`` at a time (default).

    ``ceil(n / k)`` inner iterations cover every tissue patch exactly once (the last of them
    holds ``n mod k`` patches when ``k`` does not divide ``n``); further iterations continue with
    a new permutation. With ``n < k`` every iteration holds all ``n`` patches.
    """

    name = "permutation"

    def plan(
        self, grid: PatchGrid, k: int, zeta: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """See :meth:`Sampler.plan`."""
        _check_plan_args(k, zeta)
        candidates = grid.tissue_indices()
        out: list[np.ndarray] = []
        perm = np.empty(0, dtype=np.int64)
        pos = 0
        while len(out) < zeta:
            if pos >= perm.size:
                perm = rng.permutation(candidates).astype(np.int64)
                pos = 0
            out.append(perm[pos : pos + k].copy())
            pos += k
        return out


class AllPatchesSampler(Sampler):
    """Every patch of the grid, background included, in storage order, ``k`` at a time.

    Deterministic (``rng`` is not used). After the last patch it starts again from the first.
    Meant for grids without a tissue mask (e.g. UltraMNIST); on a grid with background cells the
    engine recomputes and writes those cells too while they are sampled.
    """

    name = "all"

    def plan(
        self, grid: PatchGrid, k: int, zeta: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """See :meth:`Sampler.plan`."""
        _check_plan_args(k, zeta)
        n = grid.n_patches
        per_pass = math.ceil(n / k)
        out = []
        for j in range(zeta):
            start = (j % per_pass) * k
            out.append(np.arange(start, min(start + k, n), dtype=np.int64))
        return out


class TissueWeightedSampler(Sampler):
    """``k`` tissue patches per iteration, without replacement, with probability ∝ fraction.

    Each iteration is an independent draw (no coverage guarantee). The weights are the grid's
    ``fractions`` on its tissue patches; a grid without fractions (``PatchGrid.full`` or a plain
    mask) weighs its tissue patches equally, and so does a grid whose tissue fractions are all
    0. Only patches with a positive weight are drawn; with fewer than ``k`` of them an iteration
    holds them all.
    """

    name = "tissue_weighted"

    def plan(
        self, grid: PatchGrid, k: int, zeta: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """See :meth:`Sampler.plan`."""
        _check_plan_args(k, zeta)
        candidates = grid.tissue_indices()
        if candidates.size == 0:
            return [np.empty(0, dtype=np.int64) for _ in range(zeta)]
        if grid.fractions is None:
            weights = np.ones(candidates.size)
        else:
            weights = np.clip(grid.fractions.ravel()[candidates], 0.0, None)
            if not weights.sum() > 0:
                weights = np.ones(candidates.size)
        positive = weights > 0
        candidates, weights = candidates[positive], weights[positive]
        p = weights / weights.sum()
        size = min(k, candidates.size)
        return [
            np.sort(rng.choice(candidates, size=size, replace=False, p=p)).astype(np.int64)
            for _ in range(zeta)
        ]


SAMPLERS: dict[str, type[Sampler]] = {
    PermutationSampler.name: PermutationSampler,
    AllPatchesSampler.name: AllPatchesSampler,
    TissueWeightedSampler.name: TissueWeightedSampler,
}


def build_sampler(name: str, **kwargs: Any) -> Sampler:
    """Sampler by name.

    Args:
        name: One of ``"permutation"`` (default strategy), ``"all"``, ``"tissue_weighted"``.
        **kwargs: Constructor arguments (none of the built-in samplers takes any).

    Returns:
        The sampler.

    Raises:
        ConfigError: If the name is unknown or an argument is not accepted.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of: {', '.join(sorted(SAMPLERS))}")
    try:
        return SAMPLERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"sampler {name!r} does not accept arguments {sorted(kwargs)}") from exc
