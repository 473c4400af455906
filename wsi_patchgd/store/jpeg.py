"""The Zarr codec of JPEG passthrough: a source TIFF's JPEG tiles kept in the store unchanged.

Where a source level is JPEG-tiled with tiles of exactly the store's patch size (Aperio SVS with
``--patch-size 240``, most generic and OME pyramidal TIFFs with 256 px tiles), the fastest
conversion copies every tile's bytes into the shard as they are: no decode, no re-encode, no
generation loss, and a store as small as the source. Such a level's inner chunk codec is
:class:`JpegTileCodec` (``"wsi_patchgd.jpeg"``), which keeps the TIFF's shared ``JPEGTables`` and
colour-space handling in its configuration and decodes exactly as tifffile decodes the source
(so the pixels are those OpenSlide and tifffile give for that tile; the tests measure it).
Where the patch size divides the tile size instead (512 px tiles, 128 or 256 px patches; 240 px
Aperio tiles, 120 px patches), each tile is cut into patch-size JPEGs in the DCT domain
(:mod:`wsi_patchgd.readers.jpeg_crop`: lossless, like ``jpegtran -crop``), when that is exact:
no chroma subsampling (4:4:4 or RGB-coded JPEG). The cut patches are stored as abbreviated
streams; the tables they share are the codec's ``tables``, and ``source_tile`` records the
source's tile side. Subsampled (4:2:0, 4:2:2) levels are decoded and stored losslessly instead:
there, cut patches decode differently along their edges.
Finding such pages and reading their tile bytes is the readers' job
(:mod:`wsi_patchgd.readers.tiff_tiles`); copying them into shards is the converter's
(:mod:`wsi_patchgd.store.tasks`).

The codec is registered with zarr when :mod:`wsi_patchgd` is imported and through the
``zarr.codecs`` entry point, so ``zarr.open_array`` reads these levels like any other. Other
Zarr implementations do not know it: convert with the default ``--codec blosc-lz4`` for stores
that napari / ome-zarr-py must open without wsi_patchgd installed.

Writing through zarr re-encodes with JPEG quality 95, 4:4:4 (lossy); the converter never does
that, it only copies or cuts source tiles.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

    from ..readers.tiff_tiles import JpegLevel

CODEC_NAME = "wsi_patchgd.jpeg"


def decode_tile(
    data: bytes, tables: bytes | None, colorspace: Any, outcolorspace: Any
) -> np.ndarray:
    """(h, w, 3) uint8 of one JPEG tile, decoded exactly as tifffile decodes it."""
    import imagecodecs

    out = imagecodecs.jpeg_decode(
        data, bitspersample=8, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace
    )
    return np.asarray(out, np.uint8)  # 3 samples: passthrough takes RGB/YCbCr pages only


@dataclass(frozen=True)
class JpegTileCodec(ArrayBytesCodec):
    """Array-to-bytes codec of (3, P, P) uint8 chunks stored as JPEG tiles.

    Attributes:
        tables: the TIFF's JPEGTables (abbreviated streams share them), base64, or None.
        colorspace, outcolorspace: as tifffile passes them to ``imagecodecs.jpeg_decode``
            (for Aperio's RGB-coded JPEG the JPEG colour space is RGB, not YCbCr).
        source_tile: for source tiles cut into patches, the source's tile side (None: chunks
            are whole source tiles, or written through zarr).
    """

    is_fixed_size = False

    tables: str | None = None
    colorspace: int | str | None = None
    outcolorspace: int | str | None = 2
    source_tile: int | None = None

    @classmethod
    def for_level(cls, level: JpegLevel) -> Self:
        """The codec that decodes the tiles of a source page (or the patches cut from them) as
        tifffile decodes the tiles."""
        raw = level.cut_tables if level.cut else level.tables
        tables = base64.b64encode(raw).decode() if raw else None
        return cls(tables, level.colorspace, level.outcolorspace, level.tile if level.cut else None)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, conf = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        conf = conf or {}
        return cls(**conf)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        conf: dict[str, JSON] = {
            "tables": self.tables,
            "colorspace": self.colorspace,
            "outcolorspace": self.outcolorspace,
        }
        if self.source_tile is not None:
            conf["source_tile"] = self.source_tile
        return {"name": CODEC_NAME, "configuration": conf}

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
