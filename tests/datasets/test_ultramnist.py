"""Tests of the UltraMNIST generator (wsi_patchgd.datasets.ultramnist) on the real MNIST digits."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from wsi_patchgd.cli.datasets import make_ultramnist_command
from wsi_patchgd.data.manifest import read_manifest
from wsi_patchgd.datasets import ultramnist as um
from wsi_patchgd.datasets.ultramnist import layout as um_layout
from wsi_patchgd.errors import ConfigError, StoreError
from wsi_patchgd.store import SlideStore
from wsi_patchgd.tissue import patch_tissue_fractions

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO_ROOT / ".." / "shared" / "data"))
MNIST = DATA / "mnist"
SIDE, N_TRAIN, N_VAL, SEED = 256, 4, 2, 3


def _idx(path: Path) -> np.ndarray:
    """An independent IDX reader (to cross-check the module's)."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST test set not found in {MNIST}; set WSI_PATCHGD_TEST_DATA")
    return _idx(MNIST / "t10k-images-idx3-ubyte.gz"), _idx(MNIST / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("um") / "a"
    um.make_ultramnist(
        out, N_TRAIN, N_VAL, side=SIDE, seed=SEED, mnist_dir=MNIST, workers=1, quiet=True
    )
    return out


@pytest.fixture(scope="module")
def meta(dataset: Path) -> dict:
    return json.loads((dataset / "meta.json").read_text())


def _level0(out: Path, slide_id: str) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "stores" / f"{slide_id}.zarr" / "0"), mode="r")[:])


# ------------------------------------------------------------------------------------------
# MNIST files


def test_read_idx_matches_an_independent_reader(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = um.read_idx(MNIST / "t10k-images-idx3-ubyte.gz", expect_ndim=3)
    labels = um.read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", expect_ndim=1)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, mnist[0])
    np.testing.assert_array_equal(labels, mnist[1])
    assert sorted(np.bincount(labels).tolist())[0] > 850  # every digit ~1000 times


def test_read_idx_raw_and_errors(tmp_path: Path) -> None:
    raw = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "raw").write_bytes(raw)  # uncompressed, recognised by content
    assert um.read_idx(tmp_path / "raw").shape == (10000,)
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(ConfigError, match="short.*truncated or corrupt"):
        um.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ConfigError, match="magic.*not an IDX file"):
        um.read_idx(tmp_path / "magic")
    with pytest.raises(ConfigError, match="1 dimension.*expected 3"):
        um.read_idx(tmp_path / "raw", expect_ndim=3)
    with pytest.raises(ConfigError, match="nothing-here"):
        um.read_idx(tmp_path / "nothing-here")


def test_mismatched_files_and_missing_folder(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(
        (MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    )
    with pytest.raises(ConfigError, match="not the matching t10k labels"):
        um.load_mnist(d)
    labels = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    short = labels[:4] + (500).to_bytes(4, "big") + labels[8:508]
    (d / "t10k-labels-idx1-ubyte").write_bytes(short)
    with pytest.raises(ConfigError, match="500 labels for 10000 images"):
        um.load_mnist(d)
    with pytest.raises(ConfigError, match="no such MNIST folder.*t10k-images-idx3-ubyte.gz"):
        um.load_mnist(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no MNIST files there"):
        um.load_mnist(tmp_path / "empty")


def test_default_mnist_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WSI_PATCHGD_MNIST", str(tmp_path))
    assert um.default_mnist_dir() == tmp_path
    monkeypatch.delenv("WSI_PATCHGD_MNIST")
    beside = Path(um.__file__).resolve().parents[3].parent / "shared" / "data" / "mnist"
    if beside.is_dir():  # a checkout with shared/ beside it (CI, this workplace)
        assert um.default_mnist_dir() == beside
    else:
        with pytest.raises(ConfigError, match="WSI_PATCHGD_MNIST"):
            um.default_mnist_dir()


def test_test_set_pools_are_disjoint_and_stratified(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    pools = um.load_mnist(MNIST, seed=0)
    (src_t, tr), (src_v, va) = pools.pools["train"], pools.pools["val"]
    assert src_t == src_v == "t10k"
    assert not set(tr.tolist()) & set(va.tolist())
    assert len(tr) + len(va) == 10000
    labels = mnist[1]
    for d in range(10):
        frac = np.isin(np.flatnonzero(labels == d), va).mean()
        assert abs(frac - um.VAL_FRACTION) < 0.002
    again = um.load_mnist(MNIST, seed=0).pools["val"][1]
    other = um.load_mnist(MNIST, seed=1).pools["val"][1]
    np.testing.assert_array_equal(again, va)
    assert not np.array_equal(other, va)


def test_full_mnist_uses_train_digits_for_train(tmp_path: Path, mnist: tuple) -> None:
    """With train-* files as well, train canvases take training digits, val ones test digits."""
    images, labels = mnist
    d = tmp_path / "full"
    d.mkdir()

    def idx(arr: np.ndarray) -> bytes:
        head = bytes([0, 0, 8, arr.ndim]) + b"".join(n.to_bytes(4, "big") for n in arr.shape)
        return head + arr.tobytes()

    # a stand-in "training set": the first 6000 test digits (the real one is 60,000)
    for name, arr in (("images-idx3", images[:6000]), ("labels-idx1", labels[:6000])):
        (d / f"train-{name}-ubyte.gz").write_bytes(gzip.compress(idx(arr), compresslevel=1))
    (d / "t10k-images.idx3-ubyte").write_bytes(idx(images[6000:]))  # Kaggle's spelling
    (d / "t10k-labels.idx1-ubyte").write_bytes(idx(labels[6000:]))
    out = tmp_path / "ds"
    um.make_ultramnist(out, 2, 2, side=128, seed=0, mnist_dir=d, workers=1, quiet=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["mnist"]["pool_indices"]["train"][0] == "train"
    assert len(meta["mnist"]["pool_indices"]["train"][1]) == 6000
    for c in meta["canvases"]:
        assert c["mnist_set"] == ("train" if c["split"] == "train" else "t10k")
        lab = labels[:6000] if c["split"] == "train" else labels[6000:]
        assert [int(lab[i]) for i in c["mnist_index"]] == c["digits"]


# ------------------------------------------------------------------------------------------
# the dataset


def test_manifest_and_stores(dataset: Path, meta: dict) -> None:
    with open(dataset / "manifest.csv", newline="") as fh:
        recs = list(csv.DictReader(fh))
    ids = [f"um-train-{i}" for i in range(N_TRAIN)] + [f"um-val-{i}" for i in range(N_VAL)]
    assert [r["slide_id"] for r in recs] == ids
    assert [r["store"] for r in recs] == [f"stores/{i}.zarr" for i in ids]
    assert [int(r["fold"]) for r in recs] == [0] * N_TRAIN + [1] * N_VAL
    rows = read_manifest(str(dataset / "manifest.csv"), num_classes=28)  # opens every store
    assert [r.label for r in rows] == [c["label"] for c in meta["canvases"]]
    assert sorted(p.name for p in (dataset / "stores").iterdir()) == sorted(
        f"{i}.zarr" for i in ids
    )


def test_labels_are_the_sums_of_the_real_digits(meta: dict, mnist: tuple) -> None:
    labels = mnist[1]
    for split in ("train", "val"):  # balanced: fewer canvases than classes -> all different
        got = [c["label"] for c in meta["canvases"] if c["split"] == split]
        assert len(set(got)) == len(got)
    for c in meta["canvases"]:
        assert c["mnist_set"] == "t10k"
        assert [int(labels[i]) for i in c["mnist_index"]] == c["digits"]
        assert um.MIN_DIGITS <= len(c["digits"]) <= um.MAX_DIGITS
        assert c["label"] == c["digit_sum"] == sum(c["digits"])
        assert 0 <= c["label"] <= 27


def test_digits_do_not_overlap_and_vary_in_size(meta: dict) -> None:
    lo, hi = um.digit_side_range(SIDE)
    assert (lo, hi) == (8, 128)
    sides = []
    for c in meta["canvases"]:
        boxes = c["boxes"]
        assert c["scales"] == [b[2] / 28 for b in boxes]
        for i, (x, y, s) in enumerate(boxes):
            assert 0 <= x and 0 <= y and x + s <= SIDE and y + s <= SIDE
            assert lo <= s <= hi
            sides.append(s)
            for x2, y2, s2 in boxes[i + 1 :]:
                assert x + s <= x2 or x2 + s2 <= x or y + s <= y2 or y2 + s2 <= y
    assert max(sides) / min(sides) > 4  # widely varying scales


def test_train_and_val_digits_are_disjoint(meta: dict) -> None:
    pools = meta["mnist"]["pool_indices"]
    tr, va = set(pools["train"][1]), set(pools["val"][1])
    assert not tr & va and len(tr | va) == 10000
    used: dict[str, set[int]] = {s: set() for s in ("train", "val")}
    for c in meta["canvases"]:
        used[c["split"]].update(c["mnist_index"])
        assert set(c["mnist_index"]) <= (tr if c["split"] == "train" else va)
    assert not used["train"] & used["val"]


def test_digits_are_where_meta_says(dataset: Path, meta: dict, mnist: tuple) -> None:
    images = mnist[0]
    for c in meta["canvases"][:3]:
        px = _level0(dataset, c["slide_id"])
        assert px.shape == (3, SIDE, SIDE) and px.dtype == np.uint8
        assert (px[0] == px[1]).all() and (px[0] == px[2]).all()  # grey in RGB
        inside = np.zeros((SIDE, SIDE), bool)
        for (x, y, s), i in zip(c["boxes"], c["mnist_index"], strict=True):
            expect = um.resize_digit(images[i], s)
            np.testing.assert_array_equal(px[0, y : y + s, x : x + s], expect)
            assert expect.max() > 100  # a visible digit
            inside[y : y + s, x : x + s] = True
        assert (px[0][~inside] == 0).all()  # black elsewhere


def test_resize_digit_area_and_bilinear(mnist: tuple) -> None:
    d = mnist[0][0]
    small, big = um.resize_digit(d, 14), um.resize_digit(d, 112)
    assert small.shape == (14, 14) and big.shape == (112, 112)
    # area averaging: a 2x shrink is the 2x2 mean
    mean = d.reshape(14, 2, 14, 2).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - mean).max() <= 1
    assert abs(float(big.mean()) - float(d.mean())) < 3
    np.testing.assert_array_equal(um.resize_digit(d, 28), d)


def test_every_patch_is_usable_for_training(dataset: Path) -> None:
    from wsi_patchgd.data.loader import StorePatchSource

    url = str(dataset / "stores" / "um-train-0.zarr")
    s = SlideStore(url)
    assert s.complete and s.patch_size == 32 and s.n_levels == 1
    assert s.grid_shape(0) == (8, 8)
    assert (s.patch_fractions(0) == 1).all()
    assert s.tissue_mask().all() and s.tissue_fraction == 1.0
    assert s.meta.tissue.method == "all"
    src = StorePatchSource([url], level=0)
    assert src.grid(0).n_tissue == 64
    # another patch size goes through the stored mask: every patch still counts
    assert StorePatchSource([url], level=0, patch_size=64).grid(0).n_tissue == 16
    patches = s.read_patches(0, [0, 7], [0, 7])
    assert patches.shape == (2, 3, 32, 32)


def test_large_canvas_gets_a_pyramid(tmp_path: Path) -> None:
    out = tmp_path / "big"
    um.make_ultramnist(out, 1, 0, side=1200, patch_size=64, mnist_dir=MNIST, workers=1, quiet=True)
    s = SlideStore(str(out / "stores" / "um-train-0.zarr"))
    assert [s.level_shape(i) for i in range(s.n_levels)] == [(1200, 1200), (600, 600)]
    lv0 = np.asarray(s.array(0)[:])
    from wsi_patchgd.store import downsample2x

    np.testing.assert_array_equal(np.asarray(s.array(1)[:]), downsample2x(lv0))
    mask = s.tissue_mask()
    assert mask.all() and s.meta.tissue.mask_level == 1
    for lv in (0, 1):  # the grid's last row/column is partly outside (1200 = 18.75 x 64)
        f = s.patch_fractions(lv)
        assert f.shape == s.grid_shape(lv)
        assert (f[:-1, :-1] == 1).all() and 0 < f[-1, -1] < 1
        # the table is what the stored mask gives (the loader's path for other patch sizes)
        scale = s.downsample(lv) / s.mask_downsample
        np.testing.assert_allclose(f, patch_tissue_fractions(mask, scale, 64, f.shape))


# ------------------------------------------------------------------------------------------
# reproducibility


def test_same_seed_same_pixels_whatever_the_workers(
    dataset: Path, meta: dict, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    um.make_ultramnist(
        again, N_TRAIN, N_VAL, side=SIDE, seed=SEED, mnist_dir=MNIST, workers=2, quiet=True
    )
    assert json.loads((again / "meta.json").read_text()) == meta
    assert (again / "manifest.csv").read_text() == (dataset / "manifest.csv").read_text()
    for c in meta["canvases"]:
        np.testing.assert_array_equal(
            _level0(again, c["slide_id"]), _level0(dataset, c["slide_id"])
        )


def test_other_seed_other_canvases(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    um.make_ultramnist(
        other, N_TRAIN, N_VAL, side=SIDE, seed=SEED + 1, mnist_dir=MNIST, workers=1, quiet=True
    )
    for sid in ("um-train-0", "um-val-0"):
        assert not np.array_equal(_level0(other, sid), _level0(dataset, sid))


def test_existing_output_is_kept_unless_overwrite(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="already holds an UltraMNIST dataset.*--overwrite"):
        um.make_ultramnist(dataset, 1, 1, side=SIDE, mnist_dir=MNIST, workers=1, quiet=True)
    out = tmp_path / "ow"
    um.make_ultramnist(out, 3, 1, side=128, mnist_dir=MNIST, workers=1, quiet=True)
    um.make_ultramnist(out, 1, 1, side=128, mnist_dir=MNIST, workers=1, quiet=True, overwrite=True)
    assert sorted(p.name for p in (out / "stores").iterdir()) == [
        "um-train-0.zarr",
        "um-val-0.zarr",
    ]


# ------------------------------------------------------------------------------------------
# variants and errors


def test_ten_classes_is_sum_mod_ten(tmp_path: Path, mnist: tuple) -> None:
    out = tmp_path / "ten"
    um.make_ultramnist(
        out, 10, 0, side=128, classes=10, seed=5, mnist_dir=MNIST, workers=1, quiet=True
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label"] == "digit sum mod 10"
    assert sorted(c["label"] for c in meta["canvases"]) == list(range(10))
    for c in meta["canvases"]:
        assert c["label"] == sum(c["digits"]) % 10
        assert [int(mnist[1][i]) for i in c["mnist_index"]] == c["digits"]


def test_max_label_is_the_largest_real_digit(tmp_path: Path, mnist: tuple) -> None:
    out = tmp_path / "max"
    um.make_ultramnist(
        out, 20, 0, side=128, classes=10, label="max", seed=2, mnist_dir=MNIST, workers=2,
        quiet=True,
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label"] == "largest digit"
    assert sorted(c["label"] for c in meta["canvases"]) == sorted(list(range(10)) * 2)
    for c in meta["canvases"]:
        real = [int(mnist[1][i]) for i in c["mnist_index"]]
        assert real == c["digits"] and c["label"] == max(real)
    with pytest.raises(ConfigError, match="label=max .* pass classes=10"):
        um.make_ultramnist(tmp_path / "x", 1, 0, label="max", mnist_dir=MNIST, workers=1)
    with pytest.raises(ConfigError, match="label='mean'"):
        um.make_ultramnist(tmp_path / "y", 1, 0, label="mean", mnist_dir=MNIST, workers=1)


def test_sum10_is_the_papers_ten_classes(tmp_path: Path, mnist: tuple) -> None:
    """label=sum10: label = digit sum with only sums 0..9, balanced, paper's 28..252 px digits
    on 512 px canvases (and they still fit without overlap)."""
    assert um.paper_digit_side_range(512) == (28, 252)
    sets = um.digit_multisets(10, "sum10")
    assert all(len(m) and all(sum(c) == lab for c in m) for lab, m in enumerate(sets))
    assert sets[0] == [(0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0)]
    out = tmp_path / "s10"
    um.make_ultramnist(
        out, 20, 10, side=512, classes=10, label="sum10", seed=4, mnist_dir=MNIST, workers=2,
        quiet=True, patch_size=64,
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label"] == "digit sum (sums 0..9 only)" and meta["classes"] == 10
    assert meta["digit_sizes"] is None and meta["digit_side_range"] == [28, 252]
    train = [c["label"] for c in meta["canvases"] if c["split"] == "train"]
    val = [c["label"] for c in meta["canvases"] if c["split"] == "val"]
    assert sorted(train) == sorted(list(range(10)) * 2) and sorted(val) == list(range(10))
    sides = []
    for c in meta["canvases"]:
        real = [int(mnist[1][i]) for i in c["mnist_index"]]
        assert real == c["digits"] and c["label"] == c["digit_sum"] == sum(real) <= 9
        boxes = c["boxes"]
        for i, (x, y, s) in enumerate(boxes):
            assert 28 <= s <= 252 and x + s <= 512 and y + s <= 512
            sides.append(s)
            for x2, y2, s2 in boxes[i + 1 :]:
                assert x + s <= x2 or x2 + s2 <= x or y + s <= y2 or y2 + s2 <= y
    assert max(sides) > 150 and min(sides) < 50
    with open(out / "manifest.csv", newline="") as fh:
        assert [int(r["label"]) for r in csv.DictReader(fh)] == train + val
    src = SlideStore(str(out / "stores" / "um-train-0.zarr")).meta.source.to_dict()
    assert src["label"] == meta["label"] and src["digit_side_range"] == [28, 252]
    with pytest.raises(ConfigError, match="label=sum10 .* pass classes=10"):
        um.make_ultramnist(tmp_path / "x", 1, 0, label="sum10", mnist_dir=MNIST, workers=1)


def test_digit_sizes_bound_the_digit_sides(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    um.make_ultramnist(
        out, 20, 5, side=256, classes=10, seed=1, digit_sizes=(16, 48), mnist_dir=MNIST,
        workers=1, quiet=True, patch_size=64,
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["digit_sizes"] == meta["digit_side_range"] == [16, 48]
    sides = [b[2] for c in meta["canvases"] for b in c["boxes"]]
    assert min(sides) >= 16 and max(sides) <= 48 and max(sides) / min(sides) > 2
    for c in meta["canvases"]:
        assert c["label"] == sum(c["digits"]) % 10
    src = SlideStore(str(out / "stores" / "um-val-0.zarr")).meta.source.to_dict()
    assert src["digit_side_range"] == [16, 48]
    # the paper variant on a 512 px canvas with explicit sizes overrides its default
    um.make_ultramnist(
        tmp_path / "p", 3, 0, side=512, classes=10, label="sum10", digit_sizes=[60, 200],
        mnist_dir=MNIST, workers=1, quiet=True, patch_size=64,
    )  # fmt: skip
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["digit_side_range"] == [60, 200]
    assert all(60 <= b[2] <= 200 for c in meta["canvases"] for b in c["boxes"])


@pytest.mark.parametrize("sizes", [(4, 48), (16, 300), (48, 16), (16,), "16,48", (16.5, 48)])
def test_bad_digit_sizes(tmp_path: Path, sizes: Any) -> None:
    with pytest.raises(ConfigError, match=r"^digit_sizes=.*\(--digit-sizes\)") as exc:
        um.make_ultramnist(
            tmp_path / "x", 1, 0, side=256, digit_sizes=sizes, mnist_dir=MNIST, workers=1
        )
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "x").exists()  # checked before anything is written


def test_sum_and_max_outputs_do_not_change(meta: dict, tmp_path: Path) -> None:
    """The default digit sizes are digit_side_range(side), and giving them explicitly (or
    generating again) reproduces the same canvases, for sum and max alike."""
    assert meta["digit_sizes"] is None
    assert meta["digit_side_range"] == list(um.digit_side_range(SIDE))
    again = tmp_path / "again"
    um.make_ultramnist(
        again, N_TRAIN, N_VAL, side=SIDE, seed=SEED, mnist_dir=MNIST, workers=1, quiet=True,
        digit_sizes=um.digit_side_range(SIDE),
    )  # fmt: skip
    meta2 = json.loads((again / "meta.json").read_text())
    assert meta2["canvases"] == meta["canvases"]
    kw: dict[str, Any] = {"side": 128, "classes": 10, "label": "max", "seed": 7, "quiet": True}
    runs = []
    for name in ("m1", "m2"):
        um.make_ultramnist(tmp_path / name, 10, 2, mnist_dir=MNIST, workers=1, **kw)
        runs.append(json.loads((tmp_path / name / "meta.json").read_text())["canvases"])
    assert runs[0] == runs[1]
    assert sorted(c["label"] for c in runs[0] if c["split"] == "train") == list(range(10))


def test_bad_arguments(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"mnist_dir": MNIST, "workers": 1, "quiet": True}
    with pytest.raises(ConfigError, match="classes=7"):
        um.make_ultramnist(tmp_path / "a", 1, 1, classes=7, **kw)
    with pytest.raises(ConfigError, match="side=32"):
        um.make_ultramnist(tmp_path / "b", 1, 1, side=32, **kw)
    with pytest.raises(ConfigError, match="n_train=0, n_val=0"):
        um.make_ultramnist(tmp_path / "c", 0, 0, **kw)
    with pytest.raises(ConfigError, match="patch_size=4"):
        um.make_ultramnist(tmp_path / "d", 1, 1, patch_size=4, **kw)


def test_digits_that_cannot_fit_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    pools = um.load_mnist(MNIST)
    monkeypatch.setattr(um_layout, "digit_side_range", lambda side: (40, 40))  # two never fit in 64
    with pytest.raises(ConfigError, match="um-train-0: could not place .* 64 px canvas"):
        multisets = um.digit_multisets(28)
        um.layout_canvas("train", 0, 20, 0, 64, multisets, pools, pools.by_digit("train"))


# ------------------------------------------------------------------------------------------
# CLI


def _cli() -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    cli.add_command(make_ultramnist_command)
    return cli


def test_cli_make_ultramnist(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["make-ultramnist", "--out", str(out), "--n-train", "2", "--n-val", "1"]
    args += ["--side", "128", "--classes", "10", "--mnist-dir", str(MNIST), "--workers", "1", "-q"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert "3 canvases (2 train, 1 val)" in res.output
    assert len(read_manifest(str(out / "manifest.csv"), num_classes=10)) == 3
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "already holds" in lines[0]
    res = CliRunner().invoke(
        _cli(),
        [
            "make-ultramnist",
            "--out",
            str(tmp_path / "x"),
            "--n-train",
            "1",
            "--n-val",
            "1",
            "--mnist-dir",
            str(tmp_path / "none"),
        ],
    )
    assert res.exit_code == 2 and "no such MNIST folder" in res.output


def test_cli_digit_sizes_and_sum10(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    base = ["make-ultramnist", "--n-train", "16", "--n-val", "4", "--side", "128"]
    base += ["--mnist-dir", str(MNIST), "--workers", "2", "-q"]
    args = base + ["--out", str(out), "--label", "sum10", "--digit-sizes", "16,48"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert "20 canvases (16 train, 4 val)" in res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == 10 and meta["label"] == "digit sum (sums 0..9 only)"
    assert meta["digit_sizes"] == [16, 48]
    for c in meta["canvases"]:
        assert c["label"] == sum(c["digits"]) <= 9
        assert all(16 <= b[2] <= 48 for b in c["boxes"])
    rows = read_manifest(str(out / "manifest.csv"), num_classes=10)
    counts = np.bincount([r.label for r in rows if r.fold == 0], minlength=10)
    assert len(counts) == 10 and set(counts.tolist()) == {1, 2}  # balanced: 16 = 10 + 6
    for bad, msg in (("16", "--digit-sizes '16': give MIN,MAX"), ("4,48", "8 <= MIN <= MAX")):
        res = CliRunner().invoke(
            _cli(), [*base, "--out", str(tmp_path / bad), "--digit-sizes", bad]
        )
        assert res.exit_code == 2
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and msg in lines[0], res.output
