"""MNIST digits for UltraMNIST: reading IDX files and building disjoint digit pools.

With the full MNIST files (``train-*`` and ``t10k-*``) training canvases take training digits
and validation canvases test digits. With only the official 10,000-digit test set (what the
shared test data holds) the digits are split into disjoint pools, stratified by digit,
:data:`VAL_FRACTION` of each digit going to validation (seeded).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError

#: Fraction of every digit's test images that go to validation when only the test set exists.
VAL_FRACTION = 0.2
#: Side of an MNIST digit image, pixels.
MNIST_SIDE = 28
#: Where to download MNIST (named in error messages).
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or a mirror, e.g. torchvision's)"

_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


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
    repo = Path(__file__).resolve().parents[3]
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
