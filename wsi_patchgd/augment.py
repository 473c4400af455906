"""Per-image data augmentation that PatchGD and the GD baseline see identically.

An :class:`Augmentation` is one draw for one image: a dihedral transform (horizontal flip, then
vertical flip, then ``rot90`` counter-clockwise quarter turns as :func:`torch.rot90` over dims
``(-2, -1)``) and an HED stain jitter (Tellez et al. 2018): in the optical-density stain space
of scikit-image's ``hed_from_rgb``, each stain channel ``s`` becomes ``alpha * s + beta``.

Both parts commute with tiling: for an image whose sides are multiples of ``P``, transforming
the whole image equals moving each patch to its transformed cell (:meth:`Augmentation.grid`,
:meth:`Augmentation.source_indices`) and transforming it (:meth:`Augmentation.apply_patches`).
:class:`AugmentedSource` wraps a patch source that way, so the engine (which fills Z patch by
patch) and the GD baseline (which stitches every patch, see ``engine.gd.load_image``) train on
the same augmented image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed
from torch import Tensor

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.sampling import PatchGrid

__all__ = [
    "AugmentConfig",
    "AugmentedSource",
    "Augmentation",
    "hed_jitter",
    "hed_to_rgb",
    "rgb_to_hed",
]

_IDENTITY_HED: tuple[float, ...] = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
_EPS = 1e-6  # scikit-image's floor on RGB in (0, 1] before the log
_LOG_EPS = math.log(_EPS)
_CHUNK = 32  # patches per colour-jitter step (bounds the float32 temporaries)


def _mix(x: Tensor, m: np.ndarray) -> Tensor:
    """``out[..., d, :, :] = sum_c x[..., c, :, :] * m[c, d]`` as plain elementwise ops.

    No matrix kernel is involved, so every pixel's result is bitwise independent of the batch
    layout (patch-wise equals whole-image, chunk by chunk).
    """
    w = [[float(v) for v in row] for row in np.asarray(m, np.float64)]
    c = [x[..., i, :, :] for i in range(3)]
    return torch.stack([c[0] * w[0][d] + c[1] * w[1][d] + c[2] * w[2][d] for d in range(3)], -3)


def rgb_to_hed(rgb: Tensor) -> Tensor:
    """HED stain concentrations of float RGB in ``[0, 1]``, as ``skimage.color.rgb2hed``.

    Unlike scikit-image, negative concentrations are kept, so :func:`hed_to_rgb` inverts this.

    Args:
        rgb: Float tensor ``(..., 3, H, W)``.

    Returns:
        Float tensor of the same shape: the H, E and D channels.
    """
    return _mix(torch.log(rgb.clamp_min(_EPS)) / _LOG_EPS, hed_from_rgb)


def hed_to_rgb(hed: Tensor) -> Tensor:
    """Float RGB in ``[0, 1]`` of HED stain concentrations, as ``skimage.color.hed2rgb``."""
    return torch.exp(_mix(hed, rgb_from_hed) * _LOG_EPS).clamp(0.0, 1.0)


def hed_jitter(images: Tensor, alpha: Sequence[float], beta: Sequence[float]) -> Tensor:
    """HED jitter of uint8 images: ``hed_to_rgb(alpha * rgb_to_hed(x) + beta)``.

    Computed as one affine map in optical-density space (``od' = od @ A + b``), in float32,
    pixel by pixel (so patch-wise equals whole-image), then clipped to ``0..255`` and rounded.

    Args:
        images: uint8 ``(..., 3, H, W)`` on any device.
        alpha: Per-stain scales (H, E, D).
        beta: Per-stain shifts (H, E, D).

    Returns:
        uint8 tensor of the shape of ``images``.
    """
    h, r = np.asarray(hed_from_rgb, np.float64), np.asarray(rgb_from_hed, np.float64)
    scale = h @ np.diag(np.asarray(alpha, np.float64)) @ r
    shift = torch.tensor(np.asarray(beta, np.float64) @ r, dtype=torch.float32)
    shift = shift.to(images.device).view(3, 1, 1)
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    lut = (torch.log(levels.clamp_min(_EPS)) / _LOG_EPS).to(torch.float32).to(images.device)
    flat = images.reshape(-1, *images.shape[-3:])
    out = torch.empty_like(flat)
    for i in range(0, flat.shape[0], _CHUNK):
        od = _mix(lut[flat[i : i + _CHUNK].long()], scale) + shift
        rgb = torch.exp(od * _LOG_EPS) * 255.0
        out[i : i + _CHUNK] = rgb.clamp(0.0, 255.0).round().to(torch.uint8)
    return out.reshape(images.shape)


@dataclass(frozen=True)
class Augmentation:
    """One augmentation draw for one image.

    Attributes:
        flip_h: Mirror left-right (first).
        flip_v: Mirror top-bottom (second).
        rot90: Counter-clockwise quarter turns, ``0..3`` (last), as ``torch.rot90(x, k, (-2, -1))``.
        hed: ``(alpha_h, alpha_e, alpha_d, beta_h, beta_e, beta_d)`` stain jitter; identity is
            ``(1, 1, 1, 0, 0, 0)``.
    """

    flip_h: bool = False
    flip_v: bool = False
    rot90: int = 0
    hed: tuple[float, ...] = _IDENTITY_HED

    def __post_init__(self) -> None:
        if self.rot90 not in (0, 1, 2, 3):
            raise ConfigError(f"rot90={self.rot90} must be 0, 1, 2 or 3")
        if len(self.hed) != 6:
            raise ConfigError(f"hed needs 6 values (alpha and beta per stain), got {self.hed}")
        object.__setattr__(self, "hed", tuple(float(v) for v in self.hed))
        object.__setattr__(self, "rot90", int(self.rot90))

    @classmethod
    def identity(cls) -> Augmentation:
        """The draw that changes nothing."""
        return cls()

    @property
    def spatial_identity(self) -> bool:
        """Whether the spatial part changes nothing."""
        return not self.flip_h and not self.flip_v and self.rot90 == 0

    @property
    def color_identity(self) -> bool:
        """Whether the stain jitter changes nothing."""
        return self.hed == _IDENTITY_HED

    @property
    def is_identity(self) -> bool:
        """Whether this draw changes nothing."""
        return self.spatial_identity and self.color_identity

    def _spatial(self, x: Tensor) -> Tensor:
        if self.flip_h:
            x = torch.flip(x, dims=(-1,))
        if self.flip_v:
            x = torch.flip(x, dims=(-2,))
        if self.rot90:
            x = torch.rot90(x, self.rot90, dims=(-2, -1))
        return x.contiguous()

    def _spatial_np(self, a: np.ndarray) -> np.ndarray:
        if self.flip_h:
            a = np.flip(a, axis=-1)
        if self.flip_v:
            a = np.flip(a, axis=-2)
        return np.ascontiguousarray(np.rot90(a, self.rot90, axes=(-2, -1)))

    def _color(self, x: Tensor) -> Tensor:
        return x if self.color_identity else hed_jitter(x, self.hed[:3], self.hed[3:])

    def apply_image(self, image: Tensor) -> Tensor:
        """The augmented whole image: uint8 ``(3, H, W)`` -> uint8 ``(3, H', W')``."""
        return self._color(self._spatial(image))

    def apply_patches(self, patches: Tensor) -> Tensor:
        """Each patch augmented alike: uint8 ``(N, 3, P, P)`` -> uint8 ``(N, 3, P, P)``."""
        return self._color(self._spatial(patches))

    def grid(self, grid: PatchGrid) -> PatchGrid:
        """The augmented image's grid (tissue and fractions moved with their patches)."""
        if self.spatial_identity:
            return grid
        fractions = None if grid.fractions is None else self._spatial_np(grid.fractions)
        return PatchGrid(grid.patch_size, self._spatial_np(grid.tissue), fractions)

    def index_map(self, grid: PatchGrid) -> np.ndarray:
        """Flat source index of every augmented cell, int64 ``(n_patches,)`` (row-major)."""
        cells = np.arange(grid.n_patches, dtype=np.int64).reshape(grid.shape)
        return self._spatial_np(cells).ravel()

    def source_indices(self, grid: PatchGrid, indices: np.ndarray) -> np.ndarray:
        """Source-grid flat indices of augmented-grid flat indices.

        Args:
            grid: The *source* image's grid.
            indices: Flat indices into :meth:`grid` of ``grid``.

        Returns:
            int64 array, same length and order as ``indices``.
        """
        return self.index_map(grid)[np.asarray(indices, dtype=np.int64)]


@dataclass(frozen=True)
class AugmentConfig:
    """What :meth:`draw` may draw, one draw per image.

    Attributes:
        flips: Draw ``flip_h`` and ``flip_v``, each with probability 1/2.
        rot90: Draw a uniform number of quarter turns in ``0..3`` (with ``flips``: the 8
            symmetries of the square, uniformly, each reached twice).
        hed_sigma: Stain jitter strength ``s`` in ``[0, 1]``: ``alpha ~ U(1 - s, 1 + s)`` and
            ``beta ~ U(-s, s)`` per stain, independent (HEDJitter, Tellez et al. 2018); 0: off.
    """

    flips: bool = True
    rot90: bool = True
    hed_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hed_sigma <= 1.0:
            raise ConfigError(f"hed_sigma={self.hed_sigma} must lie in [0, 1]")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self.flips or self.rot90 or self.hed_sigma > 0

    def draw(self, rng: np.random.Generator) -> Augmentation:
        """One draw; uses ``rng`` only for what is enabled (same state, same draw)."""
        flip_h = flip_v = False
        k = 0
        hed = _IDENTITY_HED
        if self.flips:
            flip_h, flip_v = (bool(v) for v in rng.random(2) < 0.5)
        if self.rot90:
            k = int(rng.integers(4))
        if self.hed_sigma > 0:
            s = self.hed_sigma
            alpha = rng.uniform(1.0 - s, 1.0 + s, 3)
            beta = rng.uniform(-s, s, 3)
            hed = tuple(float(v) for v in (*alpha, *beta))
        return Augmentation(flip_h, flip_v, k, hed)


class AugmentedSource:
    """A patch source that serves ``base``'s images augmented, one :class:`Augmentation` each.

    Images missing from ``augmentations`` (or with an identity draw) pass through unchanged.
    Other attributes (``store``, ``levels``, ...) are the base's.

    Args:
        base: The source to wrap (any ``PatchSource``).
        augmentations: ``{image_id: Augmentation}``.
    """

    def __init__(self, base: Any, augmentations: Mapping[int, Augmentation]) -> None:
        self._base = base
        self._augs = {int(i): a for i, a in augmentations.items() if not a.is_identity}
        self._grids: dict[int, PatchGrid] = {}
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def draw(
        cls, base: Any, images: Sequence[int], config: AugmentConfig, rng: np.random.Generator
    ) -> AugmentedSource:
        """Wrap ``base`` with one ``config.draw(rng)`` per image of ``images``, in order."""
        return cls(base, {int(i): config.draw(rng) for i in images})

    @property
    def base(self) -> Any:
        """The wrapped source."""
        return self._base

    def augmentation(self, image: int) -> Augmentation:
        """The draw applied to ``image`` (identity if none)."""
        return self._augs.get(int(image), Augmentation.identity())

    @property
    def patch_size(self) -> int:
        """The base's patch side."""
        return int(self._base.patch_size)

    def __len__(self) -> int:
        return len(self._base)

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("_base")
        if base is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(base, name)

    def _index_maps(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """``(to_source, to_augmented)``: flat-index permutations of an augmented image."""
        if image not in self._maps:
            fwd = self._augs[image].index_map(self._base.grid(image))
            inv = np.empty_like(fwd)
            inv[fwd] = np.arange(fwd.size, dtype=np.int64)
            self._maps[image] = (fwd, inv)
        return self._maps[image]

    def _to_source(self, image: int, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return self._index_maps(image)[0][idx] if image in self._augs else idx

    def grid(self, image: int) -> PatchGrid:
        """The augmented grid of ``image`` (cached)."""
        image = int(image)
        if image not in self._augs:
            return self._base.grid(image)
        if image not in self._grids:
            self._grids[image] = self._augs[image].grid(self._base.grid(image))
        return self._grids[image]

    def read(self, image: int, indices: np.ndarray) -> Tensor:
        """uint8 patches ``(m, 3, P, P)`` of the augmented image, in the order of ``indices``."""
        image = int(image)
        patches = self._base.read(image, self._to_source(image, indices))
        return self._augs[image].apply_patches(patches) if image in self._augs else patches

    def prefetch(self, requests: Sequence[tuple[int, np.ndarray]]) -> None:
        """Forward announced reads (mapped to source indices) to the base, if it prefetches."""
        prefetch = getattr(self._base, "prefetch", None)
        if prefetch is not None:
            prefetch([(int(i), self._to_source(int(i), idx)) for i, idx in requests])

    def cancel_prefetch(self) -> None:
        """Forward to the base, if it prefetches."""
        cancel = getattr(self._base, "cancel_prefetch", None)
        if cancel is not None:
            cancel()

    def storage_order(self, image: int, indices: np.ndarray) -> np.ndarray:
        """``indices`` (augmented grid) reordered by the base's storage order.

        The base's ``storage_order`` of the source indices when it has one, else ascending
        source index (the base's row-major order); returned as augmented-grid indices.
        """
        image = int(image)
        order = getattr(self._base, "storage_order", None)
        if image not in self._augs:
            idx = np.asarray(indices, dtype=np.int64)
            return np.asarray(order(image, idx), np.int64) if order is not None else idx
        src = self._to_source(image, indices)
        src = np.asarray(order(image, src), np.int64) if order is not None else np.sort(src)
        return self._index_maps(image)[1][src]
