"""One contract every slide store passes: local and ``s3://``, written with every codec.

The source is a small pyramidal JPEG-tiled TIFF made of real H&E tiles (test data ``tiles/``),
with 128 px tiles so that ``--codec jpeg`` stores its tiles unchanged; each codec of
:data:`wsi_patchgd.store.format.CODECS` converts it once, and the S3 stores are those stores
uploaded to the moto server of ``tests/conftest.py``. :class:`StoreContract` holds the
assertions; :class:`TestLocalStores` and :class:`TestS3Stores` run them (as zarr's
``StoreTests``). :class:`TestStoreReader` runs the slide-reader contract of
``tests/readers/test_readers.py`` over stores.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.readers.test_readers import ReaderContract
from wsi_patchgd.errors import SlideReadError, StoreError, StoreIncompleteError
from wsi_patchgd.io import filesystem
from wsi_patchgd.readers import SlideReader, open_slide, to_rgb_uint8
from wsi_patchgd.store import (
    ATTR_KEY,
    CODECS,
    ConvertOptions,
    LevelMeta,
    SlideStore,
    StoreMeta,
    StoreReader,
    TissueMeta,
    convert_slide,
)

P = 128  # patch = chunk = source tile side
SHARD = 2 * P
H, W = 600, 1000  # not multiples of P: partial edge chunks
MPP = 0.5
OPTS = {"patch_size": P, "shard_patches": 2, "min_level_size": P}
JPEG_LEVEL = "jpeg (source tiles, unchanged)"


@dataclasses.dataclass(frozen=True)
class Case:
    """One store under test."""

    url: str
    storage_options: dict[str, Any] | None
    codec: str
    source: Path


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A 1000 x 600 two-level JPEG TIFF (128 px tiles, 0.5 um/px) of real tissue and glass."""
    tiles = sorted((data_dir / "tiles").glob("tissue-level0-*.png"))[:2]
    a, b = (to_rgb_uint8(np.asarray(Image.open(t))) for t in tiles)
    img = np.full((H, W, 3), 255, np.uint8)  # glass where no tile is
    img[:512, :512] = a
    img[H - 512 :, W - 512 :] = b
    half = img.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("contract-src") / "tissue.tif"
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate((img, half)):
            mpp = MPP * 2**i
            tif.write(
                level,
                tile=(P, P),
                photometric="rgb",
                compression="jpeg",
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
            )
    return path


@pytest.fixture(scope="module")
def local_stores(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """codec -> a local store of the source written with it."""
    out = tmp_path_factory.mktemp("contract-stores")
    stores = {}
    for codec in CODECS:
        dest = out / f"{codec}.zarr"
        res = convert_slide(str(source), str(dest), ConvertOptions(codec=codec, **OPTS))
        assert res.status == "ok", res
        stores[codec] = str(dest)
    return stores


@pytest.fixture(scope="module")
def s3_stores(
    local_stores: dict[str, str], s3_server: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """codec -> the same store on the S3 server; and the storage options."""
    import uuid

    so = dict(s3_server)
    fs, _ = filesystem("s3://x", so)
    bucket = f"contract-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    stores = {}
    for codec, path in local_stores.items():
        fs.put(path, f"{bucket}/{codec}.zarr", recursive=True)
        stores[codec] = f"s3://{bucket}/{codec}.zarr"
    fs.invalidate_cache()
    return stores, so


@pytest.fixture(scope="module")
def source_reader(source: Path) -> Iterator[SlideReader]:
    with open_slide(source) as r:
        yield r


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _attrs(case: Case) -> dict[str, Any]:
    """The store's ``wsi_patchgd`` attributes, read from its zarr.json directly."""
    fs, root = filesystem(case.url, case.storage_options)
    doc = json.loads(fs.cat_file(f"{root}/zarr.json"))
    return dict(doc["attributes"][ATTR_KEY])


def _write_root(case: Case, name: str, change: dict[str, Any]) -> str:
    """A store beside ``case.url`` holding only a copy of its zarr.json, attributes changed."""
    fs, root = filesystem(case.url, case.storage_options)
    doc = json.loads(fs.cat_file(f"{root}/zarr.json"))
    doc["attributes"][ATTR_KEY].update(change)
    url = case.url.rstrip("/").rsplit("/", 1)[0] + f"/{name}-{case.codec}.zarr"
    fs2, root2 = filesystem(url, case.storage_options)
    fs2.makedirs(root2, exist_ok=True)
    fs2.pipe_file(f"{root2}/zarr.json", json.dumps(doc).encode())
    if hasattr(fs2, "invalidate_cache"):
        fs2.invalidate_cache()
    return url


def _regions(level: tuple[int, int], n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Random (x, y, w, h) regions of a (height, width) level, some past its edges."""
    rng = np.random.default_rng(seed)
    h, w = level
    out = [(-20, -10, 50, 40), (w - 30, h - 20, 60, 50)]
    for _ in range(n):
        rw, rh = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        out.append(
            (int(rng.integers(0, max(1, w - rw))), int(rng.integers(0, max(1, h - rh))), rw, rh)
        )
    return out


def _source_level(lv: LevelMeta) -> int | None:
    kind, j = lv.origin.split(":")
    return int(j) if kind == "source" else None


def _assert_pixels(got: np.ndarray, want: np.ndarray, codec_of_level: str) -> None:
    """Equal for lossless levels; close for levels that are JPEG tiles (decoders may differ)."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
    if codec_of_level == JPEG_LEVEL:
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 8 and diff.mean() < 0.5, (diff.max(), diff.mean())
    else:
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# the contract


class StoreContract:
    """Every place a store can live subclasses this with a ``case`` fixture (one per codec)."""

    @pytest.fixture
    def case(self, codec: str) -> Case:
        raise NotImplementedError

    @pytest.fixture
    def store(self, case: Case) -> SlideStore:
        return SlideStore(case.url, case.storage_options)

    def test_metadata_is_typed_and_round_trips(self, store: SlideStore, case: Case) -> None:
        m = store.meta
        assert isinstance(m, StoreMeta) and isinstance(m.tissue, TissueMeta)
        assert all(isinstance(lv, LevelMeta) for lv in m.levels) and isinstance(m.levels, tuple)
        assert m.complete and store.complete and m.format_version == 1
        assert (m.codec, m.patch_size, m.shard_size) == (case.codec, P, SHARD)
        assert m.mpp == pytest.approx(MPP) and store.mpp == pytest.approx(MPP)
        assert m.reader == "tifffile" and m.vendor == "generic-tiff"
        assert m.source.name == case.source.name and m.source.size == case.source.stat().st_size
        assert m.tissue.fraction is not None and 0 < m.tissue.fraction < 1
        assert m.tissue.params is not None and store.tissue_fraction == m.tissue.fraction
        on_disk = _attrs(case)
        assert m.to_dict() == on_disk == store.attrs
        assert StoreMeta.from_dict(on_disk, case.url) == m
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.patch_size = 1  # type: ignore[misc]

    def test_levels_and_shapes(self, store: SlideStore, source_reader: SlideReader) -> None:
        m = store.meta
        assert store.n_levels == len(m.levels) == 3
        assert store.level_shape(0) == (H, W)
        for i, lv in enumerate(m.levels):
            assert store.level_shape(i) == (lv.height, lv.width)
            assert lv.shape == (3, lv.height, lv.width) == tuple(store.array(i).shape)
            assert store.downsample(i) == lv.downsample == 2.0**i
            assert store.grid_shape(i) == (math.ceil(lv.height / P), math.ceil(lv.width / P))
            assert store.level_mpp(i) == pytest.approx(MPP * 2**i)
            j = _source_level(lv)
            if j is not None:
                src = source_reader.levels[j]
                assert (src.height, src.width) == (lv.height, lv.width)
        assert [_source_level(lv) for lv in m.levels] == [0, 1, None]
        jpeg = [lv.codec == JPEG_LEVEL for lv in m.levels]
        assert jpeg == ([True, True, False] if m.codec == "jpeg" else [False] * 3)
        with pytest.raises(StoreError, match="level 3 does not exist"):
            store.read_region(3, 0, 0, 4, 4)

    def test_read_region_equals_the_source(
        self, store: SlideStore, source_reader: SlideReader
    ) -> None:
        for i, lv in enumerate(store.meta.levels):
            j = _source_level(lv)
            for x, y, w, h in _regions(store.level_shape(i), 4, seed=i):
                got = store.read_region(i, x, y, w, h)
                assert got.shape == (h, w, 3) and got.flags.c_contiguous
                chw = store.read_region_chw(i, x, y, w, h)
                assert chw.shape == (3, h, w)
                np.testing.assert_array_equal(chw.transpose(1, 2, 0), got)
                if j is not None:
                    _assert_pixels(got, source_reader.read_region(j, x, y, w, h), lv.codec)
        lh, lw = store.level_shape(0)
        outside = store.read_region(0, lw - 5, lh - 5, 20, 20)
        assert (outside[5:] == 255).all() and (outside[:, 5:] == 255).all()
        assert (store.read_region(0, -40, -40, 30, 30) == 255).all()

    def test_to_dask_equals_reads(self, store: SlideStore) -> None:
        for i in range(store.n_levels):
            h, w = store.level_shape(i)
            d = store.to_dask(i)
            assert d.shape == (3, h, w) and d.dtype == np.uint8
            assert d.chunksize == (3, min(P, h), min(P, w))
            whole = d.compute(scheduler="synchronous")
            np.testing.assert_array_equal(whole, np.asarray(store.array(i)[:]))
            np.testing.assert_array_equal(whole, store.read_region_chw(i, 0, 0, w, h))
        x, y = 100, 70
        part = store.to_dask(0)[:, y : y + 200, x : x + 300].compute(scheduler="synchronous")
        np.testing.assert_array_equal(part, store.read_region_chw(0, x, y, 300, 200))
        by_shard = store.to_dask(0, chunks=(3, SHARD, SHARD))
        assert by_shard.chunksize == (3, SHARD, SHARD)

    def test_level_for_mpp(self, store: SlideStore) -> None:
        assert store.level_for_mpp(MPP) == 0
        assert store.level_for_mpp(0.1) == 0  # finer than level 0: level 0
        assert store.level_for_mpp(0.9) == 0  # level 1 would be coarser than asked
        assert store.level_for_mpp(2 * MPP) == 1
        assert store.level_for_mpp(2 * MPP * 0.995) == 1  # within the 1 % tolerance
        assert store.level_for_mpp(np.float32(4 * MPP)) == 2
        assert store.level_for_mpp(1000.0) == 2  # coarser than every level: the coarsest
        for bad in (0, -1.0, math.nan, math.inf, "fine"):
            with pytest.raises(ValueError, match="mpp must be a positive number"):
                store.level_for_mpp(bad)  # type: ignore[arg-type]

    def test_store_without_mpp(self, case: Case) -> None:
        url = _write_root(case, "no-mpp", {"mpp": None})
        s = SlideStore(url, case.storage_options)
        assert s.mpp is None and s.meta.mpp is None and s.level_mpp(1) is None
        with pytest.raises(StoreError, match=r"no-mpp-.*: store has no mpp .*choose a level"):
            s.level_for_mpp(MPP)

    def test_patch_batch_reads(self, store: SlideStore) -> None:
        for i in range(store.n_levels):
            n_h, n_w = store.grid_shape(i)
            rows, cols = np.divmod(np.arange(n_h * n_w), n_w)
            assert store.chunk_reader(i) is not None  # the fast path handles every codec
            got = store.read_patches(i, rows, cols)
            assert got.shape == (n_h * n_w, 3, P, P)
            ref = store.read_regions_chw(
                i, [(int(c) * P, int(r) * P) for r, c in zip(rows, cols, strict=True)], P, P
            )
            np.testing.assert_array_equal(got, ref)
        h, w = store.level_shape(0)
        last = store.read_patches(0, [h // P], [w // P])[0]  # partial: white past the edge
        assert (last[:, h % P :, :] == 255).all() and (last[:, :, w % P :] == 255).all()
        small = store.read_patches(0, [0, 3, 4], [0, 5, 7], patch_size=64)  # not the chunk
        np.testing.assert_array_equal(
            small, store.read_regions_chw(0, [(0, 0), (320, 192), (448, 256)], 64, 64)
        )

    def test_opens_as_a_slide(self, store: SlideStore, case: Case) -> None:
        for reader in ("auto", "store"):
            with open_slide(case.url, case.storage_options, reader=reader) as r:
                assert isinstance(r, StoreReader) and r.name == "store"
                assert [(lv.height, lv.width) for lv in r.levels] == [
                    store.level_shape(i) for i in range(store.n_levels)
                ]
                assert r.mpp == store.mpp and r.vendor == store.meta.vendor
                assert r.properties["store.codec"] == case.codec
                np.testing.assert_array_equal(
                    r.read_region(1, 10, 20, 64, 48), store.read_region(1, 10, 20, 64, 48)
                )

    def test_incomplete_store_is_refused(self, case: Case) -> None:
        url = _write_root(case, "incomplete", {"complete": False})
        with pytest.raises(StoreIncompleteError) as e:
            SlideStore(url, case.storage_options)
        msg = str(e.value)
        assert (
            msg.startswith(f"{url}: store is incomplete") and "rerun `wsi-patchgd convert`" in msg
        )
        with pytest.raises(SlideReadError) as e2:  # the store's own error, not "a directory"
            open_slide(url, case.storage_options)
        assert str(e2.value) == msg
        s = SlideStore(url, case.storage_options, require_complete=False)
        assert not s.complete and s.meta.complete is False and s.attrs["complete"] is False


class TestLocalStores(StoreContract):
    @pytest.fixture
    def case(self, codec: str, local_stores: dict[str, str], source: Path) -> Case:
        return Case(local_stores[codec], None, codec, source)


class TestS3Stores(StoreContract):
    @pytest.fixture
    def case(
        self, codec: str, s3_stores: tuple[dict[str, str], dict[str, str]], source: Path
    ) -> Case:
        stores, so = s3_stores
        return Case(stores[codec], so, codec, source)


# --------------------------------------------------------------------------------------------
# metadata parsing


def test_bad_metadata_is_one_clear_error(local_stores: dict[str, str]) -> None:
    good = SlideStore(local_stores["blosc-lz4"]).attrs
    where = "s3://b/slide.zarr"
    for key in ("patch_size", "levels", "source", "tissue", "complete", "mpp"):
        broken = {k: v for k, v in good.items() if k != key}
        with pytest.raises(StoreError, match=rf"^{where}: store attributes '{key}' missing; rerun"):
            StoreMeta.from_dict(broken, where)
    bad: list[tuple[dict[str, Any], str]] = [
        ({**good, "patch_size": "256"}, r"'patch_size' is '256', not a number"),
        ({**good, "shard_size": 2.5}, r"'shard_size' is 2.5, not an integer"),
        ({**good, "complete": "yes"}, r"'complete' is 'yes', not true or false"),
        ({**good, "levels": []}, r"'levels' is \[\], not a list of levels"),
        ({**good, "levels": [{**good["levels"][0], "shape": [3, 10]}]}, r"'levels\[0\].shape'"),
        ({**good, "levels": [{"shape": [3, 1, 1]}]}, r"'levels\[0\].downsample' missing"),
        ({**good, "source": {"name": "x"}}, r"'source.url' missing"),
        ({**good, "tissue": {"fraction": "most"}}, r"'tissue.fraction' is 'most', not a number"),
    ]
    for attrs, pattern in bad:
        with pytest.raises(StoreError, match=pattern):
            StoreMeta.from_dict(attrs, where)
    extra = {**good, "future_key": [1, 2], "source": {**good["source"], "label": 3}}
    meta = StoreMeta.from_dict(extra, where)
    assert meta.to_dict() == extra and meta.extra == {"future_key": [1, 2]}
    assert meta.source.extra == {"label": 3}


def test_a_zarr_group_that_is_no_store(tmp_path: Path) -> None:
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(SlideReadError, match="a Zarr group but not a wsi_patchgd store"):
        open_slide(tmp_path / "plain.zarr")
    with pytest.raises(SlideReadError, match="is a directory, not a slide"):
        open_slide(tmp_path)


# --------------------------------------------------------------------------------------------
# the slide-reader contract, over stores


_READER_CASES = [f"local-{c}" for c in CODECS] + ["s3-blosc-lz4"]


class TestStoreReader(ReaderContract):
    exact_levels = 3

    @pytest.fixture(params=_READER_CASES)
    def reader(  # type: ignore[override]
        self, request: pytest.FixtureRequest, local_stores: dict[str, str]
    ) -> Iterator[SlideReader]:
        where, codec = str(request.param).split("-", 1)
        if where == "s3":
            stores, so = request.getfixturevalue("s3_stores")
            r = StoreReader(stores[codec], so)
        else:
            r = StoreReader(local_stores[codec])
        yield r
        r.close()

    def test_region_matches_reference(  # type: ignore[override]
        self, reader: SlideReader, source_reader: SlideReader
    ) -> None:
        """The reference of a store is the slide it was converted from."""
        assert isinstance(reader, StoreReader)
        for i, lv in enumerate(reader.store.meta.levels[: self.exact_levels]):
            j = _source_level(lv)
            if j is None:
                continue
            for x, y, w, h in _regions((lv.height, lv.width), 3, seed=10 + i):
                _assert_pixels(
                    reader.read_region(i, x, y, w, h),
                    source_reader.read_region(j, x, y, w, h),
                    lv.codec,
                )
