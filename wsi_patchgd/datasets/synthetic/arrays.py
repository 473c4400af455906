"""Array helpers of the synthetic slide generator: hashing, pooling, flips and types.

Everything here is plain NumPy shared by the texture, layout, marker and rendering modules:
the float32/uint8 array types, a platform-independent integer hash (tile placement and glass
choice), mean pooling across pyramid levels, the 8 dihedral flips, and normalisation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = np.float32
FloatArray = NDArray[np.float32]
ByteArray = NDArray[np.uint8]


def is_int(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer (booleans excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def hash_grid(seed: int, a: Any, b: Any, salt: int = 0) -> NDArray[np.uint64]:
    """Vectorised, platform-independent 64-bit hash of integer grids (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        x = (np.array(a, dtype=np.uint64, ndmin=1) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            np.array(b, dtype=np.uint64, ndmin=1) * np.uint64(0xC2B2AE3D27D4EB4F)
        )
        x ^= np.uint64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) & (2**64 - 1))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def hash_int(seed: int, a: int, b: int, salt: int = 0) -> int:
    """:func:`hash_grid` of one pair of integers, as a Python int."""
    return int(hash_grid(seed, a, b, salt)[0])


def dihedral(arr: NDArray[Any], k: int) -> NDArray[Any]:
    """One of the 8 flips/90-degree rotations of the first two axes (a view)."""
    if k & 4:
        arr = arr[:, ::-1]
    return np.rot90(arr, k & 3)


def mean_pool(arr: FloatArray, factor: int, axes: tuple[int, int] = (0, 1)) -> FloatArray:
    """Mean-pool two adjacent axes by ``factor``, padding the far edges by replication."""
    if factor == 1:
        return arr
    a0, a1 = axes
    pad = [(0, 0)] * arr.ndim
    pad[a0] = (0, -arr.shape[a0] % factor)
    pad[a1] = (0, -arr.shape[a1] % factor)
    if any(p[1] for p in pad):
        arr = np.pad(arr, pad, mode="edge")
    shape = (
        *arr.shape[:a0],
        arr.shape[a0] // factor,
        factor,
        arr.shape[a1] // factor,
        factor,
        *arr.shape[a1 + 1 :],
    )
    return arr.reshape(shape).mean(axis=(a0 + 1, a0 + 3), dtype=F32)


def to_uint8(arr: NDArray[Any]) -> ByteArray:
    """Round and clip to ``[0, 255]``, as uint8."""
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def normalise(arr: FloatArray, rows: int = 256) -> FloatArray:
    """Zero mean, unit variance, in place (float32; no full-size temporaries)."""
    arr = arr.astype(F32, copy=False)
    arr -= arr.mean()
    sumsq = sum(float(np.square(arr[y : y + rows]).sum()) for y in range(0, arr.shape[0], rows))
    std = math.sqrt(sumsq / max(arr.size, 1))
    arr /= F32(std if std > 0 else 1.0)
    return arr
