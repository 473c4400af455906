"""JPEG passthrough: store a source TIFF's JPEG tiles in the Zarr store unchanged.

Where a source level is JPEG-tiled with tiles of exactly the store's patch size (Aperio SVS with
``--patch-size 240``, most generic and OME pyramidal TIFFs with 256 px tiles), the fastest
conversion copies every tile's bytes into the shard as they are: no decode, no re-encode, no
generation loss, and a store as small as the source. Such a level's inner chunk codec is
:class:`JpegTileCodec` (``"wsi_patchgd.jpeg"``), which keeps the TIFF's shared ``JPEGTables`` and
colour-space handling in its configuration and decodes exactly as tifffile decodes the source
(so the pixels are those OpenSlide and tifffile give for that tile; the tests measure it).

The codec is registered with zarr when :mod:`wsi_patchgd` is imported and through the
``zarr.codecs`` entry point, so ``zarr.open_array`` reads these levels like any other. Other
Zarr implementations do not know it: convert with the default ``--codec blosc-lz4`` for stores
that napari / ome-zarr-py must open without wsi_patchgd installed.

Writing through zarr re-encodes with JPEG quality 95, 4:4:4 (lossy); the converter never does
that, it only copies source tiles.
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration

from ..io import StorageOptions, filesystem, is_remote, local_path

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

CODEC_NAME = "wsi_patchgd.jpeg"
_JPEG_COMPRESSIONS = {7}  # new-style JPEG (what SVS and pyramidal TIFF writers use)


def decode_tile(
    data: bytes, tables: bytes | None, colorspace: Any, outcolorspace: Any
) -> np.ndarray:
    """(h, w, 3) uint8 of one JPEG tile, decoded exactly as tifffile decodes it."""
    import imagecodecs

    out = imagecodecs.jpeg_decode(
        data, bitspersample=8, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace
    )
    return np.asarray(out, np.uint8)  # 3 samples: jpeg_levels admits RGB/YCbCr pages only


@dataclass(frozen=True)
class JpegTileCodec(ArrayBytesCodec):
    """Array-to-bytes codec of (3, P, P) uint8 chunks stored as JPEG tiles.

    Attributes:
        tables: the TIFF's JPEGTables (abbreviated streams share them), base64, or None.
        colorspace, outcolorspace: as tifffile passes them to ``imagecodecs.jpeg_decode``
            (for Aperio's RGB-coded JPEG the JPEG colour space is RGB, not YCbCr).
    """

    is_fixed_size = False

    tables: str | None = None
    colorspace: int | str | None = None
    outcolorspace: int | str | None = 2

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, conf = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        conf = conf or {}
        return cls(**conf)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {
            "name": CODEC_NAME,
            "configuration": {
                "tables": self.tables,
                "colorspace": self.colorspace,
                "outcolorspace": self.outcolorspace,
            },
        }

    @property
    def tables_bytes(self) -> bytes | None:
        return base64.b64decode(self.tables) if self.tables else None

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if np.dtype(native) != np.uint8 or len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"{CODEC_NAME} stores (3, y, x) uint8 arrays, not {shape} {native}")

    def decode_chunk(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """(3, h, w) of one stored tile (h, w = the chunk shape; the tile may be larger)."""
        hwc = decode_tile(data, self.tables_bytes, self.colorspace, self.outcolorspace)
        out = np.empty(shape, np.uint8)
        h, w = min(shape[1], hwc.shape[0]), min(shape[2], hwc.shape[1])
        if h < shape[1] or w < shape[2]:
            out.fill(255)
        for c in range(3):  # channel by channel: contiguous writes
            out[c, :h, :w] = hwc[:h, :w, c]
        return out

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        arr = self.decode_chunk(chunk_bytes.to_bytes(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)  # type: ignore[arg-type]

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        import imagecodecs

        chw = np.asarray(chunk_array.as_ndarray_like(), np.uint8)
        hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
        # A complete JFIF stream (its own tables, YCbCr): decodes the same whatever the tables
        # in the configuration, as long as the colour space is YCbCr.
        if self.colorspace not in (None, 6, "YCBCR", "ycbcr"):
            raise ValueError(
                f"{CODEC_NAME}: this level holds RGB-coded source JPEG tiles and is read-only; "
                "convert with --codec blosc-lz4 for a writable store"
            )
        data = imagecodecs.jpeg_encode(hwc, level=95, subsampling=(1, 1))  # 4:4:4
        return chunk_spec.prototype.buffer.from_bytes(bytes(data))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # JPEG size depends on content (zarr's Blosc/Zstd do the same)


def register() -> None:
    """Make zarr know the codec (idempotent; the entry point does it for plain zarr users)."""
    from zarr.registry import register_codec

    register_codec(CODEC_NAME, JpegTileCodec)


register()


# --------------------------------------------------------------------------------------------
# the source side


@dataclass(frozen=True)
class JpegLevel:
    """A TIFF page whose JPEG tiles can be stored unchanged."""

    page: int  #: index into the TIFF's pages
    height: int
    width: int
    tile: int
    tables: bytes | None
    colorspace: int | str | None
    outcolorspace: int | str | None

    def codec(self) -> JpegTileCodec:
        return JpegTileCodec(
            base64.b64encode(self.tables).decode() if self.tables else None,
            self.colorspace,
            self.outcolorspace,
        )


def jpeg_levels(
    source: str, patch_size: int, storage_options: StorageOptions | None = None
) -> list[JpegLevel]:
    """The pages of a TIFF whose tiles are P x P 8-bit RGB/YCbCr JPEG (empty for other files)."""
    import tifffile

    try:
        with JpegTiles(source, storage_options) as jt:
            return jt.levels(patch_size)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError):
        return []


class JpegTiles:
    """Raw tile bytes of a TIFF, by positional reads (thread-safe, no file lock)."""

    def __init__(self, source: str, storage_options: StorageOptions | None = None) -> None:
        import tifffile

        self.source = source
        self._fd: int | None = None
        self._fh: Any = None
        self._lock = threading.Lock()
        self._pages: dict[int, tuple[int, int, np.ndarray, np.ndarray]] = {}
        if is_remote(source):
            self._fs, self._path = filesystem(source, storage_options)
            self._fh = self._fs.open(self._path, "rb")
            self._tif = tifffile.TiffFile(self._fh)
        else:
            p = local_path(source)
            self._tif = tifffile.TiffFile(p)
            self._fd = os.open(p, os.O_RDONLY)

    def __enter__(self) -> JpegTiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def levels(self, patch_size: int) -> list[JpegLevel]:
        from tifffile.tifffile import jpeg_decode_colorspace

        out = []
        pages: list[Any] = list(self._tif.pages)
        for i, page in enumerate(pages):
            if not hasattr(page, "compression") or int(page.compression) not in _JPEG_COMPRESSIONS:
                continue
            if not (
                page.is_tiled
                and int(page.tilewidth) == patch_size
                and int(page.tilelength) == patch_size
                and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8
                and int(page.planarconfig) == 1
                and int(page.photometric) in (2, 6)
                and not page.extrasamples
                and getattr(page, "jpegheader", None) is None
                and page.imagedepth == 1
            ):
                continue
            cs, ocs = jpeg_decode_colorspace(
                int(page.photometric), int(page.planarconfig), page.extrasamples, page.is_jfif
            )
            out.append(
                JpegLevel(
                    i,
                    int(page.imagelength),
                    int(page.imagewidth),
                    patch_size,
                    page.jpegtables,
                    cs,
                    ocs,
                )
            )
        return out

    def _page(self, page: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(tiles across, tiles down, offsets, byte counts) of a page, parsed once: tifffile
        parses pages lazily from one shared file handle, which is not safe across threads."""
        with self._lock:
            info = self._pages.get(page)
            if info is None:
                pg: Any = self._tif.pages[page]
                info = (
                    -(-int(pg.imagewidth) // int(pg.tilewidth)),
                    -(-int(pg.imagelength) // int(pg.tilelength)),
                    np.asarray(pg.dataoffsets, np.int64),
                    np.asarray(pg.databytecounts, np.int64),
                )
                self._pages[page] = info
        return info

    def tiles(self, page: int, rows: range, cols: range) -> dict[tuple[int, int], bytes]:
        """Bytes of the tiles (row, col) of a page; tiles the file leaves empty are absent.
        Thread-safe (positional reads)."""
        nx, ny, offs, counts = self._page(page)
        want = [
            (r, c, r * nx + c)
            for r in rows
            for c in cols
            if r < ny and c < nx and counts[r * nx + c]
        ]
        if self._fd is not None:
            return {(r, c): os.pread(self._fd, int(counts[i]), int(offs[i])) for r, c, i in want}
        blobs = self._fs.cat_ranges(
            [self._path] * len(want),
            [int(offs[i]) for _, _, i in want],
            [int(offs[i] + counts[i]) for _, _, i in want],
        )
        return {(r, c): b for (r, c, _), b in zip(want, blobs, strict=True)}

    def close(self) -> None:
        self._tif.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._fh is not None:
            self._fh.close()
