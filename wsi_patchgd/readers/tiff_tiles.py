"""Raw tile bytes of a TIFF, undecoded: what JPEG passthrough copies into a store unchanged.

:class:`JpegTiles` is a :class:`~wsi_patchgd.readers.tiff.TiffReader` (same open, positional
reads and close) that also hands out the stored bytes of any page's tiles and finds the pages
whose tiles are P x P 8-bit RGB/YCbCr JPEG (:class:`JpegLevel`), which a store can keep as they
are. Decoding such a tile is the store's codec's job (:mod:`wsi_patchgd.store.jpeg`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..errors import SlideReadError
from ..io import StorageOptions
from .tiff import TiffReader

_JPEG_COMPRESSIONS = {7}  # new-style JPEG (what SVS and pyramidal TIFF writers use)


@dataclass(frozen=True)
class JpegLevel:
    """A TIFF page whose JPEG tiles can be stored unchanged.

    Attributes:
        page: index into the TIFF's pages.
        height, width: the page's size in pixels.
        tile: tile side (= the store's patch size).
        tables: the TIFF's JPEGTables (abbreviated streams share them), or None.
        colorspace, outcolorspace: as tifffile passes them to ``imagecodecs.jpeg_decode``.
    """

    page: int
    height: int
    width: int
    tile: int
    tables: bytes | None
    colorspace: int | str | None
    outcolorspace: int | str | None


def jpeg_levels(
    source: str, patch_size: int, storage_options: StorageOptions | None = None
) -> list[JpegLevel]:
    """The pages of a TIFF whose tiles are P x P 8-bit RGB/YCbCr JPEG (empty for other files)."""
    import tifffile

    try:
        with JpegTiles(source, storage_options) as jt:
            return jt.jpeg_levels(patch_size)
    except (SlideReadError, tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError):
        return []


class JpegTiles(TiffReader):
    """A TIFF reader that also reads the raw bytes of tiles, by positional reads (thread-safe,
    no file lock)."""

    def __init__(self, source: str, storage_options: StorageOptions | None = None) -> None:
        super().__init__(source, storage_options)
        self._tiles_lock = threading.Lock()
        self._tile_index: dict[int, tuple[int, int, _Segments]] = {}

    def __enter__(self) -> JpegTiles:
        return self

    def jpeg_levels(self, patch_size: int) -> list[JpegLevel]:
        """The pages whose tiles are ``patch_size`` square 8-bit RGB/YCbCr JPEG."""
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

    def _index(self, page: int) -> tuple[int, int, _Segments]:
        """(tiles across, tiles down, offsets and byte counts) of a page, parsed once: tifffile
        parses pages lazily from one shared file handle, which is not safe across threads."""
        with self._tiles_lock:
            info = self._tile_index.get(page)
            if info is None:
                pg: Any = self._tif.pages[page]
                info = (
                    -(-int(pg.imagewidth) // int(pg.tilewidth)),
                    -(-int(pg.imagelength) // int(pg.tilelength)),
                    _Segments(
                        [int(o) for o in pg.dataoffsets], [int(n) for n in pg.databytecounts]
                    ),
                )
                self._tile_index[page] = info
        return info

    def tiles(self, page: int, rows: range, cols: range) -> dict[tuple[int, int], bytes]:
        """Bytes of the tiles (row, col) of a page; tiles the file leaves empty are absent.
        Thread-safe (positional reads)."""
        nx, ny, seg = self._index(page)
        want = [
            (r, c, r * nx + c)
            for r in rows
            for c in cols
            if r < ny and c < nx and seg.databytecounts[r * nx + c]
        ]
        blobs = self._read_bytes(seg, [i for _, _, i in want])
        return {(r, c): b for (r, c, _), b in zip(want, blobs, strict=True) if b is not None}


@dataclass(frozen=True)
class _Segments:
    """Where a page's tiles lie in the file (what :meth:`TiffReader._read_bytes` reads)."""

    dataoffsets: list[int]
    databytecounts: list[int]
