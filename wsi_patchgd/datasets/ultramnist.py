"""UltraMNIST: large black canvases holding 3-5 MNIST digits of widely varying size.

The synthetic benchmark of the PatchGD paper (Gupta et al., 2023), after the UltraMNIST
dataset of Gupta et al. (2022). This is a re-implementation, not the released dataset (which
holds 4000 x 4000 JPEGs); it is generated straight into slide stores, reproducibly from a seed.

One canvas:

- a black square of side ``S`` with 3 to 5 white MNIST digits on it;
- **label** = sum of its digits, 0..27 (``classes=28``, the paper's task). Only digit sets
  whose sum is at most 27 are used, so 4 and 5 digits never exceed the 28 classes.
  ``classes=10`` is a 10-class variant in which **label = sum mod 10**;
  ``label="sum10"`` (with ``classes=10``) is the 10-class variant of the PatchGD paper and its
  reference generator (nyunAI/PatchGD, ``START_SUM=0, END_SUM=9`` on 512 px canvases):
  **label = sum of the digits**, only digit sets summing to 0..9 being used (so they hold many
  zeros: 0,0,0 is a canvas of label 0), with digits of 1x..9x MNIST's 28 px by default (see
  :func:`paper_digit_side_range`);
  ``label="max"`` (with ``classes=10``) is a variant in which **label = the largest digit**
  on the canvas: a task whose answer often sits in one small digit, so it needs the full
  resolution as the sum does, but that a network learns in far fewer steps;
- classes are balanced: the labels of a split are successive random permutations of the
  classes (so every class appears n // classes or one more times), and each canvas takes
  a digit multiset drawn uniformly among the multisets of 3-5 digits with that label, as in the
  reference generator (so most canvases hold 5 digits);
- digit sides lie between ``max(8, S/40)`` and ``S/2`` pixels (up to 20x apart;
  :func:`digit_side_range`), or in the range ``digit_sizes`` gives, or for ``label="sum10"``
  in the paper's ``28 S/512`` .. ``252 S/512`` (28..252 px on 512 px canvases); drawn
  log-uniformly with a V-shaped weight that favours the extremes 5:1 over the middle (the
  reference generator's scale distribution is V-shaped too); digits are scaled from 28 x 28
  with area averaging when shrunk and bilinear interpolation when enlarged;
- the digits' square boxes (the full scaled 28 x 28 cell) never overlap: positions are drawn by
  rejection sampling (:data:`PLACEMENT_TRIES` candidates per digit); when a digit finds no
  room the whole layout is redrawn (sizes too), at most :data:`LAYOUT_TRIES` times, then
  :class:`~wsi_patchgd.errors.ConfigError` (canvas too small).

Digit pools: with the full MNIST files (``train-*`` and ``t10k-*``) training canvases take
training digits and validation canvases test digits. With only the official 10,000-digit test
set (what the shared test data holds) the digits are split into disjoint pools, stratified by
digit, :data:`VAL_FRACTION` of each digit going to validation (seeded).

Stores: canvases are written straight into stores with the layout of
:mod:`wsi_patchgd.store.format` (grey digits replicated into RGB uint8; pyramid levels by the
same 2x2 mean as conversion), with no PNG in between and no tissue detection: the detector
looks for stained tissue and would discard a black canvas. Instead the tissue mask is all true
and every patch's tissue fraction is 1 (``meta["tissue"]["method"] == "all"``), so training
samples every patch of the canvas, empty ones included, as PatchGD does on UltraMNIST. Choose
``side`` a multiple of ``patch_size``: otherwise the last patch row and column are padded white
(the store's fill value) and partly outside the canvas.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, StoreError, WsiPatchGDError
from ..io import zarr_store
from ..readers.base import Level, SlideReader
from ..store import ConvertOptions, create_store, downsample2x, plan_levels, store_metadata
from ..store.chunk_reader import supports
from ..store.format import ATTR_KEY
from ..store.shard_writer import ShardWriter

__all__ = [
    "Canvas",
    "MnistPools",
    "digit_side_range",
    "load_mnist",
    "make_ultramnist",
    "paper_digit_side_range",
    "read_idx",
    "render_canvas",
    "resize_digit",
    "split_pool",
    "write_image_store",
]

#: Fraction of every digit's test images that go to validation when only the test set exists.
VAL_FRACTION = 0.2
#: Candidate positions tried per digit before the layout is redrawn.
PLACEMENT_TRIES = 256
#: Layouts tried per canvas before giving up.
LAYOUT_TRIES = 50
#: Digits per canvas.
MIN_DIGITS, MAX_DIGITS = 3, 5
#: Smallest canvas side accepted.
MIN_SIDE = 64
MNIST_SIDE = 28
#: Smallest digit side accepted in ``digit_sizes``.
MIN_DIGIT_SIDE = 8
#: The paper's 10-class canvases (``label="sum10"``): side, and digit scales 1x..9x of 28 px.
PAPER_SIDE, PAPER_SCALES = 512, (1, 9)
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or a mirror, e.g. torchvision's)"

_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_SPLITS = ("train", "val")


# --------------------------------------------------------------------------------------------
# MNIST


def read_idx(path: str | os.PathLike[str], *, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzip-compressed or raw.

    Args:
        path: the file; gzip is recognised by its magic bytes, not its name.
        expect_ndim: required number of dimensions (3 for images, 1 for labels).

    Returns:
        The array, in native byte order.

    Raises:
        ConfigError: missing file, bad magic number, wrong dimensions, or a size that does not
            match the header (the message names the file).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read MNIST file ({exc.strerror or exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ConfigError(
                f"{p}: corrupt gzip ({exc}); download the MNIST file again from {MNIST_URL}"
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(
            f"{p}: not an IDX file (magic number {raw[:4].hex() or 'missing'}); give the MNIST "
            f"*-idx3-ubyte / *-idx1-ubyte files from {MNIST_URL}"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise ConfigError(
            f"{p}: IDX file has {ndim} dimension(s), expected {expect_ndim} "
            f"({'images' if expect_ndim == 3 else 'labels'}); are image and label files swapped?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{p}: truncated IDX header; download the file again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise ConfigError(
            f"{p}: IDX header says shape {shape} ({need} bytes of data) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt, download it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find(mnist_dir: Path, prefix: str, kind: str) -> Path | None:
    """``<prefix>-<kind>-idxN-ubyte[.gz]`` or the ``<prefix>-<kind>.idxN-ubyte`` spelling."""
    n = 3 if kind == "images" else 1
    for sep in ("-", "."):
        for ext in (".gz", ""):
            p = mnist_dir / f"{prefix}-{kind}{sep}idx{n}-ubyte{ext}"
            if p.is_file():
                return p
    return None


def _load_set(mnist_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    img_p, lab_p = _find(mnist_dir, prefix, "images"), _find(mnist_dir, prefix, "labels")
    if img_p is None and lab_p is None:
        return None
    if img_p is None or lab_p is None:
        have, miss = (img_p, "labels") if img_p else (lab_p, "images")
        raise ConfigError(
            f"{mnist_dir}: found {have} but not the matching {prefix} {miss} file; put both "
            f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz there"
        )
    images = read_idx(img_p, expect_ndim=3)
    labels = read_idx(lab_p, expect_ndim=1)
    if images.shape[1:] != (MNIST_SIDE, MNIST_SIDE) or images.dtype != np.uint8:
        raise ConfigError(
            f"{img_p}: images are {images.shape[1:]} {images.dtype}, expected 28 x 28 uint8 "
            "(MNIST); give the MNIST files"
        )
    if len(images) != len(labels):
        raise ConfigError(
            f"{lab_p}: {len(labels)} labels for {len(images)} images in {img_p.name}; the two "
            "files do not belong together"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ConfigError(f"{lab_p}: labels outside 0..9; not an MNIST label file")
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class MnistPools:
    """Digits for the two splits: images (N, 28, 28) uint8, labels (N,), and the pools.

    Attributes:
        images: digit images per source set name (``"train"``, ``"t10k"``).
        labels: digit labels per source set name.
        pools: per split (``"train"``, ``"val"``): (source set name, indices into that set).
        description: how the pools were made (recorded in ``meta.json``).
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    pools: dict[str, tuple[str, np.ndarray]]
    description: str

    def by_digit(self, split: str) -> list[np.ndarray]:
        """Indices (into the split's source set) of the pool's digits, one array per 0..9."""
        src, idx = self.pools[split]
        lab = self.labels[src][idx]
        return [idx[lab == d] for d in range(10)]


def split_pool(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, val) index arrays, stratified by label, from a seeded permutation.

    Args:
        labels: digit labels (N,).
        val_fraction: fraction of every label's indices that go to validation.
        seed: permutation seed.

    Returns:
        Sorted index arrays (train, val); together they hold every index exactly once.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x706F6F6C]))  # "pool"
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for d in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == d))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def default_mnist_dir() -> Path:
    """``$WSI_PATCHGD_MNIST``, else ``<repo>/../shared/data/mnist`` if it exists.

    Raises:
        ConfigError: neither exists (the message says where to get MNIST).
    """
    env = os.environ.get("WSI_PATCHGD_MNIST")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    raise ConfigError(
        "no MNIST folder given: pass --mnist-dir (mnist_dir=) or set WSI_PATCHGD_MNIST to a "
        "folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (and "
        f"optionally train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz) from {MNIST_URL}"
    )


def load_mnist(mnist_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> MnistPools:
    """Load MNIST and build disjoint train/validation digit pools.

    Args:
        mnist_dir: folder with the IDX files (default: :func:`default_mnist_dir`).
        seed: seed of the stratified split when only the test set is there.

    Returns:
        The pools: the full training set for train and the test set for validation when both
        are there, else a stratified :data:`VAL_FRACTION` split of the test set.

    Raises:
        ConfigError: no folder, no MNIST files in it, or a corrupt file.
    """
    d = Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()
    if not d.is_dir():
        raise ConfigError(
            f"{d}: no such MNIST folder; download t10k-images-idx3-ubyte.gz and "
            f"t10k-labels-idx1-ubyte.gz (optionally the train-* files) from {MNIST_URL}"
        )
    test = _load_set(d, "t10k")
    train = _load_set(d, "train")
    if train is not None and test is not None:
        return MnistPools(
            images={"train": train[0], "t10k": test[0]},
            labels={"train": train[1], "t10k": test[1]},
            pools={
                "train": ("train", np.arange(len(train[1]))),
                "val": ("t10k", np.arange(len(test[1]))),
            },
            description="MNIST training set for train canvases, test set for validation",
        )
    only = test or train
    if only is None:
        raise ConfigError(
            f"{d}: no MNIST files there (looked for t10k-images-idx3-ubyte[.gz] and "
            f"train-images-idx3-ubyte[.gz]); download them from {MNIST_URL}"
        )
    name = "t10k" if test is not None else "train"
    tr, va = split_pool(only[1], VAL_FRACTION, seed)
    return MnistPools(
        images={name: only[0]},
        labels={name: only[1]},
        pools={"train": (name, tr), "val": (name, va)},
        description=(
            f"disjoint pools from the MNIST {name} set only: {len(tr)} digits for train, "
            f"{len(va)} for val ({VAL_FRACTION:.0%} of each digit, seeded)"
        ),
    )


# --------------------------------------------------------------------------------------------
# layout and rendering


@dataclass(frozen=True)
class Canvas:
    """The layout of one canvas (what ``meta.json`` records).

    Attributes:
        slide_id: ``um-<split>-<i>``.
        split: ``train`` or ``val``.
        label: the class (digit sum, digit sum mod 10, or largest digit).
        digit_sum: sum of the digits.
        digits: digit values, in placement order.
        mnist_set: the MNIST file the digits come from (``train`` or ``t10k``).
        mnist_index: index of every digit in that file.
        boxes: ``[x, y, side]`` of every digit's square box, in canvas pixels.
    """

    slide_id: str
    split: str
    label: int
    digit_sum: int
    digits: list[int]
    mnist_set: str
    mnist_index: list[int]
    boxes: list[list[int]]

    @property
    def scales(self) -> list[float]:
        """Scale of every digit relative to MNIST's 28 px."""
        return [b[2] / MNIST_SIDE for b in self.boxes]


def digit_side_range(side: int) -> tuple[int, int]:
    """Smallest and largest digit side on a canvas of ``side`` pixels (the default)."""
    return max(MIN_DIGIT_SIDE, round(side / 40)), side // 2


def paper_digit_side_range(side: int) -> tuple[int, int]:
    """The paper's digit sides for ``label="sum10"``: 1x..9x of 28 px on a 512 px canvas
    (28..252 px), in proportion on other sides (at least :data:`MIN_DIGIT_SIDE`)."""
    lo, hi = (round(MNIST_SIDE * f * side / PAPER_SIDE) for f in PAPER_SCALES)
    return max(MIN_DIGIT_SIDE, lo), max(MIN_DIGIT_SIDE, hi)


def check_digit_sizes(digit_sizes: Any, side: int) -> tuple[int, int]:
    """``digit_sizes`` as ``(min, max)`` after checking ``8 <= min <= max <= side``.

    Raises:
        ConfigError: not two integers, or out of range (one line naming the option).
    """
    try:
        lo, hi = (int(v) for v in digit_sizes)
        if (lo, hi) != tuple(digit_sizes):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            f"digit_sizes={digit_sizes!r} (--digit-sizes): give two integers MIN,MAX, the "
            "smallest and largest digit side in canvas pixels"
        ) from None
    if not MIN_DIGIT_SIDE <= lo <= hi <= side:
        raise ConfigError(
            f"digit_sizes={lo},{hi} (--digit-sizes): need {MIN_DIGIT_SIDE} <= MIN <= MAX <= "
            f"side ({side} px)"
        )
    return lo, hi


def _multisets(classes: int, label: str = "sum") -> list[list[tuple[int, ...]]]:
    """Digit multisets of 3-5 digits with sum <= 27 (<= 9 for ``sum10``), grouped by label."""
    out: list[list[tuple[int, ...]]] = [[] for _ in range(classes)]
    for k in range(MIN_DIGITS, MAX_DIGITS + 1):
        for combo in combinations_with_replacement(range(10), k):
            s = sum(combo)
            if label == "sum10":
                if s <= 9:
                    out[s].append(combo)
            elif s <= 27:
                if label == "max":
                    out[max(combo)].append(combo)
                else:
                    out[s % classes if classes == 10 else s].append(combo)
    return out


LABELS = ("sum", "max", "sum10")


def label_name(classes: int, label: str) -> str:
    if label == "max":
        return "largest digit"
    if label == "sum10":
        return "digit sum (sums 0..9 only)"
    return "digit sum" if classes == 28 else "digit sum mod 10"


def _sample_sides(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """Log-uniform sides in [lo, hi] weighted 1 + 4 |2u - 1| (V-shaped: extremes 5x likelier)."""
    out = np.empty(n, np.int64)
    for i in range(n):
        while True:
            u, v = rng.random(), rng.random()
            if v * 5.0 <= 1.0 + 4.0 * abs(2.0 * u - 1.0):
                break
        out[i] = int(round(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))))
    return np.clip(out, lo, hi)


def _place(rng: np.random.Generator, sides: np.ndarray, canvas: int) -> list[list[int]] | None:
    """Non-overlapping boxes for digits of the given sides (largest first), or None."""
    order = np.argsort(-sides, kind="stable")
    placed = np.zeros((0, 3), np.int64)
    boxes: list[list[int]] = [[] for _ in sides]
    for i in order:
        s = int(sides[i])
        cand = rng.integers(0, canvas - s + 1, size=(PLACEMENT_TRIES, 2))
        if len(placed):
            x, y = cand[:, :1], cand[:, 1:]
            px, py, ps = placed[:, 0], placed[:, 1], placed[:, 2]
            clash = (x < px + ps) & (px < x + s) & (y < py + ps) & (py < y + s)
            ok = np.flatnonzero(~clash.any(axis=1))
        else:
            ok = np.arange(PLACEMENT_TRIES)
        if not len(ok):
            return None
        x0, y0 = (int(v) for v in cand[ok[0]])
        boxes[i] = [x0, y0, s]
        placed = np.vstack([placed, [x0, y0, s]])
    return boxes


def _layout(
    split: str,
    index: int,
    label: int,
    seed: int,
    side: int,
    multisets: list[list[tuple[int, ...]]],
    pools: MnistPools,
    by_digit: list[np.ndarray],
    sizes: tuple[int, int] | None = None,
) -> Canvas:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLITS.index(split), index]))
    options = multisets[label]
    digits = list(options[int(rng.integers(len(options)))])
    rng.shuffle(digits)
    mnist_index = [0] * len(digits)
    for d in sorted(set(digits)):
        where = [k for k, v in enumerate(digits) if v == d]
        pick = rng.choice(by_digit[d], size=len(where), replace=len(by_digit[d]) < len(where))
        for k, v in zip(where, pick, strict=True):
            mnist_index[k] = int(v)
    lo, hi = sizes if sizes is not None else digit_side_range(side)
    for _ in range(LAYOUT_TRIES):
        boxes = _place(rng, _sample_sides(rng, len(digits), lo, hi), side)
        if boxes is not None:
            return Canvas(
                slide_id=f"um-{split}-{index}",
                split=split,
                label=label,
                digit_sum=sum(digits),
                digits=[int(d) for d in digits],
                mnist_set=pools.pools[split][0],
                mnist_index=mnist_index,
                boxes=boxes,
            )
    raise ConfigError(
        f"um-{split}-{index}: could not place {len(digits)} non-overlapping digits of "
        f"{lo}..{hi} px on a {side} px canvas in {LAYOUT_TRIES} tries; use a larger side or "
        "smaller digit_sizes (--digit-sizes)"
    )


def resize_digit(digit: np.ndarray, side: int) -> np.ndarray:
    """Scale a 28 x 28 uint8 digit to ``side`` x ``side`` (area when shrinking, else bilinear).

    Args:
        digit: (28, 28) uint8.
        side: target side in pixels.

    Returns:
        (side, side) uint8.
    """
    from PIL import Image

    if side == digit.shape[0]:
        return np.array(digit, np.uint8)
    resample = Image.Resampling.BOX if side < digit.shape[0] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.asarray(digit, np.uint8)).resize((side, side), resample))


def render_canvas(canvas: Canvas, side: int, pools: MnistPools) -> np.ndarray:
    """The canvas as (side, side) uint8: black background, white digits in their boxes."""
    img = np.zeros((side, side), np.uint8)
    images = pools.images[canvas.mnist_set]
    for (x, y, s), i in zip(canvas.boxes, canvas.mnist_index, strict=True):
        img[y : y + s, x : x + s] = resize_digit(images[i], s)
    return img


# --------------------------------------------------------------------------------------------
# stores


class _ArrayReader(SlideReader):
    """An in-memory RGB image seen through the reader protocol (to plan a store's levels)."""

    name = "ultramnist"

    def __init__(self, name: str, rgb: np.ndarray) -> None:
        self.source = name
        self.format = "ultramnist"
        self.vendor = "ultramnist"
        self._rgb = rgb
        self.levels = (Level(rgb.shape[1], rgb.shape[0], 1.0),)
        self.properties = {}

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._rgb[y : y + height, x : x + width]


def _write_level(dest: str, index: int, chw: np.ndarray, shard: int) -> None:
    """Write a whole level: shard by shard with the store's shard writer when it handles the
    layout (much faster than zarr, which encodes chunk by chunk), else through zarr."""
    arr: Any = zarr.open_array(zarr_store(dest), path=str(index), mode="r+")
    meta = arr.metadata.to_dict()
    if not supports(meta):
        arr[:] = chw
        return
    writer = ShardWriter(f"{dest.rstrip('/')}/{index}", meta)
    _, h, w = chw.shape
    for sy in range(-(-h // shard)):
        for sx in range(-(-w // shard)):
            block = chw[:, sy * shard : (sy + 1) * shard, sx * shard : (sx + 1) * shard]
            writer.write(np.ascontiguousarray(block), (0, sy, sx))


def write_image_store(
    dest: str,
    rgb: np.ndarray,
    *,
    name: str,
    patch_size: int = 256,
    source: dict[str, Any] | None = None,
    options: ConvertOptions | None = None,
) -> None:
    """Write an in-memory RGB image as a complete store in which every patch is usable.

    The store has the layout :func:`~wsi_patchgd.store.convert_slide` writes (same levels,
    chunks, shards, codec and attributes; coarser levels by the same 2x2 mean), but no tissue
    detection: the mask is all true and every patch's tissue fraction is 1 (partial edge
    patches: the part inside the image). An existing store at ``dest`` is replaced.

    Args:
        dest: store path or URL (remote storage options come from the environment).
        rgb: (H, W, 3) uint8 image.
        name: image name (the store's ``source.name``).
        patch_size: chunk side = training patch size.
        source: extra keys recorded under ``source`` (how the image was made).
        options: conversion options (``patch_size`` then comes from them).

    Raises:
        ConfigError: ``rgb`` is not an RGB uint8 image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConfigError(f"{dest}: image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    options = options or ConvertOptions(patch_size=patch_size)
    reader = _ArrayReader(name, rgb)
    plans = plan_levels(reader, options)
    identity: dict[str, Any] = {"name": name, "url": f"generated:{name}", "size": 0, "mtime": None}
    identity.update(source or {})
    create_store(dest, None, reader, plans, options, identity)
    group = zarr.open_group(zarr_store(dest), mode="r+")
    level = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    for pl in plans:
        if pl.index > 0:
            level = downsample2x(level)[:, : pl.height, : pl.width]
        _write_level(dest, pl.index, level, options.shard_size)
    mask_plan = next(
        (pl for pl in plans if max(pl.height, pl.width) <= options.mask_max_size), plans[-1]
    )
    mask = np.ones((mask_plan.height, mask_plan.width), bool)
    tg = group.create_group("tissue", overwrite=True)
    tg.create_array("mask", data=mask, chunks=mask.shape, overwrite=True)
    fr = tg.create_group("fraction")
    p = options.patch_size
    for pl in plans:
        # the part of every patch inside the image (what patch_tissue_fractions gives for an
        # all-true mask): 1 except in a partial last row / column
        rows = np.minimum(p, pl.height - p * np.arange(-(-pl.height // p))) / p
        cols = np.minimum(p, pl.width - p * np.arange(-(-pl.width // p))) / p
        fractions = np.outer(rows, cols).astype(np.float32)
        fr.create_array(str(pl.index), data=fractions, overwrite=True)
    tissue = {
        "method": "all",
        "note": "generated image: no tissue detection, every patch is usable",
        "mask_level": mask_plan.index,
        "mask_downsample": mask_plan.downsample,
        "fraction": 1.0,
    }
    group.attrs[ATTR_KEY] = store_metadata(
        reader, plans, options, identity, complete=True, tissue=tissue
    )


# --------------------------------------------------------------------------------------------
# the dataset


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.every = max(1, total // 10)
        self.lock = threading.Lock()
        self.bar: Any = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="canvas", desc="ultramnist", file=sys.stderr)

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
            elif self.done % self.every == 0 or self.done == self.total:
                print(f"ultramnist: {self.done}/{self.total} canvases", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prepare_out(out: Path, overwrite: bool) -> None:
    stores = out / "stores"
    ours = [out / "manifest.csv", out / "meta.json"]
    existing = [p for p in ours if p.exists()] + (
        sorted(stores.glob("um-*.zarr")) if stores.is_dir() else []
    )
    if existing and not overwrite:
        raise StoreError(
            f"{out}: already holds an UltraMNIST dataset ({existing[0].name}); use --overwrite "
            "to replace it or choose another --out"
        )
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    stores.mkdir(parents=True, exist_ok=True)


class _Generator:
    """Lays out, renders and writes one canvas per job (in this process or a worker)."""

    def __init__(
        self,
        stores: str,
        pools: MnistPools,
        seed: int,
        side: int,
        classes: int,
        options: ConvertOptions,
        label: str = "sum",
        digit_sizes: tuple[int, int] | None = None,
    ) -> None:
        self.stores, self.pools, self.seed = stores, pools, seed
        self.side, self.classes, self.options = side, classes, options
        self.label = label
        self.digit_sizes = digit_sizes
        if digit_sizes is not None:
            self.sizes = check_digit_sizes(digit_sizes, side)
        elif label == "sum10":
            self.sizes = paper_digit_side_range(side)
        else:
            self.sizes = digit_side_range(side)
        self.multisets = _multisets(classes, label)
        self.by_digit = {s: pools.by_digit(s) for s in _SPLITS}

    def spec(self, mnist_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
        """What a worker process needs to rebuild this generator (it reloads MNIST)."""
        return {
            "stores": self.stores,
            "mnist_dir": None if mnist_dir is None else str(mnist_dir),
            "seed": self.seed,
            "side": self.side,
            "classes": self.classes,
            "label": self.label,
            "digit_sizes": self.digit_sizes,
            "patch_size": self.options.patch_size,
        }

    def __call__(self, job: tuple[str, int, int]) -> Canvas:
        split, i, label = job
        c = _layout(
            split,
            i,
            label,
            self.seed,
            self.side,
            self.multisets,
            self.pools,
            self.by_digit[split],
            self.sizes,
        )
        gray = render_canvas(c, self.side, self.pools)
        write_image_store(
            f"{self.stores}/{c.slide_id}.zarr",
            np.repeat(gray[:, :, None], 3, axis=2),
            name=c.slide_id,
            options=self.options,
            source={
                "generator": "ultramnist",
                "seed": self.seed,
                "classes": self.classes,
                "label": label_name(self.classes, self.label),
                "digit_side_range": list(self.sizes),
            },
        )
        return c


_WORKER: dict[str, _Generator] = {}


def _init_worker(spec: dict[str, Any]) -> None:
    pools = load_mnist(spec["mnist_dir"], spec["seed"])
    options = ConvertOptions(patch_size=spec["patch_size"])
    _WORKER["gen"] = _Generator(
        spec["stores"],
        pools,
        spec["seed"],
        spec["side"],
        spec["classes"],
        options,
        spec["label"],
        spec["digit_sizes"],
    )


def _run_worker(job: tuple[str, int, int]) -> Canvas:
    return _WORKER["gen"](job)


def make_ultramnist(
    out: str | os.PathLike[str],
    n_train: int,
    n_val: int,
    *,
    side: int = 512,
    classes: int = 28,
    seed: int = 0,
    label: str = "sum",
    digit_sizes: tuple[int, int] | None = None,
    mnist_dir: str | os.PathLike[str] | None = None,
    patch_size: int = 32,
    workers: int | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> Path:
    """Generate UltraMNIST canvases straight into stores, with a manifest (see module doc).

    Writes ``out/stores/um-<split>-<i>.zarr`` (split ``train`` or ``val``), ``out/manifest.csv``
    (``slide_id, store, label, fold``; fold 0 = train, 1 = val; store paths relative to
    ``out``) and ``out/meta.json`` (digits, MNIST indices, boxes and scales of every canvas,
    and the digit pools). The same arguments give identical pixels, whatever ``workers``.

    Args:
        out: output folder (local).
        n_train: training canvases.
        n_val: validation canvases.
        side: canvas side in pixels (a multiple of ``patch_size`` keeps every patch whole).
        classes: 28 (label = digit sum, 0..27) or 10 (label = digit sum mod 10).
        label: ``"sum"`` (as ``classes`` says), ``"max"`` (the largest digit; needs
            ``classes=10``) or ``"sum10"`` (the paper's 10 classes: the digit sum, only digit
            sets summing to 0..9; needs ``classes=10``).
        digit_sizes: ``(min, max)`` digit side in canvas pixels, ``8 <= min <= max <= side``
            (default: :func:`digit_side_range`, or :func:`paper_digit_side_range` for
            ``label="sum10"``). Recorded in ``meta.json`` and every store's ``source``.
        seed: seed of everything (pools, labels, digits, sizes, positions).
        mnist_dir: folder of the MNIST IDX files (default: ``$WSI_PATCHGD_MNIST`` or
            ``<repo>/../shared/data/mnist``).
        patch_size: chunk side of the stores (the training patch size).
        workers: processes rendering and writing canvases (default: one per core, at most
            8; 1 = in this process). Zarr encodes a store's chunks in one event-loop thread, so
            processes, not threads, are what scales; they are forked on Linux, spawned
            elsewhere (where a script calling this needs an ``if __name__ == "__main__":``
            guard).
        quiet: a line every 10 % instead of a progress bar.
        overwrite: replace an UltraMNIST dataset already in ``out``.

    Returns:
        The path of ``out/manifest.csv``.

    Raises:
        ConfigError: invalid arguments, missing or corrupt MNIST files, or digits that do not
            fit on the canvas.
        StoreError: ``out`` already holds a dataset and ``overwrite`` is false.
    """
    if classes not in (10, 28):
        raise ConfigError(f"classes={classes}: use 28 (digit sum) or 10 (digit sum mod 10)")
    if label not in LABELS:
        raise ConfigError(f"label={label!r}: use one of {', '.join(LABELS)}")
    if label == "max" and classes != 10:
        raise ConfigError("label=max (the largest digit) has 10 classes: pass classes=10")
    if label == "sum10" and classes != 10:
        raise ConfigError("label=sum10 (digit sums 0..9) has 10 classes: pass classes=10")
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ConfigError(f"n_train={n_train}, n_val={n_val}: need >= 0 each and >= 1 in all")
    if side < MIN_SIDE:
        raise ConfigError(f"side={side}: canvases must be at least {MIN_SIDE} px")
    if digit_sizes is not None:
        digit_sizes = check_digit_sizes(digit_sizes, side)
    try:
        options = ConvertOptions(patch_size=patch_size)
    except WsiPatchGDError as exc:
        raise ConfigError(str(exc)) from exc
    pools = load_mnist(mnist_dir, seed)
    out_p = Path(out)
    jobs: list[tuple[str, int, int]] = []
    for s_i, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        rng = np.random.default_rng(np.random.SeedSequence([seed, s_i, 0x6C6162]))  # "lab"
        blocks = [rng.permutation(classes) for _ in range(-(-n // classes))]
        labels = np.concatenate(blocks)[:n] if blocks else np.zeros(0, np.int64)
        jobs.extend((split, i, int(labels[i])) for i in range(n))
    gen = _Generator(str(out_p / "stores"), pools, seed, side, classes, options, label, digit_sizes)
    for split, n_s in zip(_SPLITS, (n_train, n_val), strict=True):
        empty = [d for d in range(10) if not len(gen.by_digit[split][d])]
        if n_s and empty:
            raise ConfigError(
                f"{pools.description}: the {split} pool has no digit {empty[0]}; give the "
                "complete MNIST files"
            )
    _prepare_out(out_p, overwrite)
    n_proc = max(1, min(workers or min(8, os.cpu_count() or 1), len(jobs)))
    progress = _Progress(len(jobs), quiet)
    canvases: list[Canvas] = []
    try:
        if n_proc == 1:
            for job in jobs:
                canvases.append(gen(job))
                progress.advance()
        else:
            # fork on Linux: no __main__ guard needed, MNIST loads in a blink (zarr resets its
            # event loop in forked children); spawn elsewhere
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ProcessPoolExecutor(
                n_proc, mp_context=ctx, initializer=_init_worker, initargs=(gen.spec(mnist_dir),)
            ) as ex:
                for c in ex.map(
                    _run_worker, jobs, chunksize=max(1, min(16, len(jobs) // (4 * n_proc)))
                ):
                    canvases.append(c)
                    progress.advance()
    finally:
        progress.close()
    from ..data.manifest import ManifestRow, write_manifest  # here: wsi_patchgd.data loads torch

    rows = [
        ManifestRow(c.slide_id, f"stores/{c.slide_id}.zarr", c.label, _SPLITS.index(c.split))
        for c in canvases
    ]
    manifest = out_p / "manifest.csv"
    write_manifest(str(manifest), rows)
    meta = {
        "generator": "wsi_patchgd.datasets.ultramnist",
        "seed": seed,
        "side": side,
        "classes": classes,
        "label": label_name(classes, label),
        "patch_size": patch_size,
        "digit_sizes": None if digit_sizes is None else list(digit_sizes),
        "digit_side_range": list(gen.sizes),
        "digits_per_canvas": [MIN_DIGITS, MAX_DIGITS],
        "mnist": {
            "dir": str(Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()),
            "pools": pools.description,
            "pool_indices": {s: [pools.pools[s][0], pools.pools[s][1].tolist()] for s in _SPLITS},
        },
        "canvases": [asdict(c) | {"scales": c.scales} for c in canvases],
    }
    (out_p / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if quiet:
        print(f"ultramnist: {len(rows)} canvases -> {manifest}", file=sys.stderr)
    return manifest


def read_meta(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a generated dataset."""
    return dict(json.loads((Path(out) / "meta.json").read_text()))
