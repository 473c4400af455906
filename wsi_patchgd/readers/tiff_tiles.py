"""Raw tile bytes of a TIFF, undecoded: what JPEG passthrough copies into a store unchanged.

:class:`JpegTiles` is a :class:`~wsi_patchgd.readers.tiff.TiffReader` (same open, positional
reads and close) that also hands out the stored bytes of any page's tiles and finds the pages
whose tiles are square 8-bit RGB/YCbCr JPEG (:class:`JpegLevel`): P x P tiles a store can keep
as they are, and tiles a multiple of P that can be cut losslessly into P x P JPEGs
(:mod:`wsi_patchgd.readers.jpeg_crop`), or why they cannot. Decoding such a tile is the store's
codec's job (:mod:`wsi_patchgd.store.jpeg`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from ..errors import SlideReadError
from ..io import StorageOptions
from .jpeg_crop import abbreviate, cut_problem, cut_problem_size, cut_tile, frame_of
from .tiff import TiffReader

_JPEG_COMPRESSIONS = {7}  # new-style JPEG (what SVS and pyramidal TIFF writers use)


@dataclass(frozen=True)
class JpegLevel:
    """A TIFF page with square JPEG tiles, and how a store of ``patch`` px chunks can keep them.

    Attributes:
        page: index into the TIFF's pages.
        height, width: the page's size in pixels.
        tile: the source's tile side.
        tables: the TIFF's JPEGTables (abbreviated streams share them), or None.
        colorspace, outcolorspace: as tifffile passes them to ``imagecodecs.jpeg_decode``.
        patch: the store's patch side (0: the tile side). Equal to ``tile``: tiles are copied
            unchanged; a divisor of it: each tile is cut losslessly into patches.
        cut_tables: for cut levels, the tables the cut patches share (their streams are stored
            without them), or None.
        problem: why the page's tiles can be neither copied nor cut exactly (the level is then
            decoded and stored with the lossless codec), or None.
    """

    page: int
    height: int
    width: int
    tile: int
    tables: bytes | None
    colorspace: int | str | None
    outcolorspace: int | str | None
    patch: int = 0
    cut_tables: bytes | None = None
    problem: str | None = None

    @property
    def cut(self) -> bool:
        """Whether tiles are cut into patches (rather than copied)."""
        return bool(self.patch) and self.patch != self.tile

    @property
    def per_tile(self) -> int:
        """Patches along a tile's side."""
        return self.tile // self.patch if self.patch else 1

    def describe(self) -> str:
        """What a store does with this page's tiles (the convert report's words)."""
        if self.problem:
            return f"decoded (JPEG tiles kept neither whole nor cut: {self.problem})"
        if self.cut:
            return f"jpeg (source tiles cut losslessly, {self.tile} -> {self.patch} px)"
        return "jpeg (source tiles, unchanged)"


def jpeg_levels(
    source: str, patch_size: int, storage_options: StorageOptions | None = None
) -> list[JpegLevel]:
    """The pages of a TIFF whose tiles are square 8-bit RGB/YCbCr JPEG (empty for other
    files), each saying whether a store of ``patch_size`` chunks copies, cuts or decodes them."""
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
        """The pages whose tiles are square 8-bit RGB/YCbCr JPEG, with what a store of
        ``patch_size`` chunks can do with them (:attr:`JpegLevel.problem` None: copy or cut)."""
        from tifffile.tifffile import jpeg_decode_colorspace

        out = []
        pages: list[Any] = list(self._tif.pages)
        for i, page in enumerate(pages):
            if not hasattr(page, "compression") or int(page.compression) not in _JPEG_COMPRESSIONS:
                continue
            if not (
                page.is_tiled
                and int(page.tilewidth) == int(page.tilelength)
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
            level = JpegLevel(
                i,
                int(page.imagelength),
                int(page.imagewidth),
                int(page.tilewidth),
                page.jpegtables,
                cs,
                ocs,
                patch_size,
            )
            if level.tile != patch_size:
                level = self._plan_cut(level)
            out.append(level)
        return out

    def _plan_cut(self, level: JpegLevel) -> JpegLevel:
        """The level with the tables its cut patches share, or with why it cannot be cut:
        decided on its first stored tile (the tiles of a page share one encoder setting)."""
        if level.tile % level.patch:
            return replace(level, problem=cut_problem_size(level.tile, level.patch))
        _, _, seg = self._index(level.page)
        first = next((k for k, n in enumerate(seg.databytecounts) if n), None)
        if first is None:
            return replace(level, problem="the page stores no tile")
        data = self._read_bytes(seg, [first])[0] or b""
        try:
            problem = cut_problem(frame_of(data), level.tile, level.patch)
            if problem is None:
                patch = cut_tile(data, level.tables, level.patch, [(0, 0)])[(0, 0)]
                return replace(level, cut_tables=abbreviate(patch)[0])
        except (OSError, ValueError) as e:
            problem = f"lossless cut failed on tile {first}: {e}"
        return replace(level, problem=problem)

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


def cut_patches(
    level: JpegLevel,
    tiles: dict[tuple[int, int], bytes],
    rows: range,
    cols: range,
) -> dict[tuple[int, int], bytes]:
    """The patches (row, col), in the level's patch grid, cut losslessly from the tiles that
    hold them (``tiles``: (tile row, tile col) -> bytes, as :meth:`JpegTiles.tiles` gives them;
    a patch of a tile the file leaves empty is absent). Patches whose tables are the level's
    ``cut_tables`` are abbreviated streams; any other is a complete stream (it decodes the same
    with or without the shared tables).

    Raises:
        SlideReadError: a tile cannot be cut (corrupt, or not coded as the page's first tile).
    """
    k = level.per_tile
    ny, nx = -(-level.height // level.patch), -(-level.width // level.patch)
    want: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in rows:
        for c in cols:
            if r < ny and c < nx and (r // k, c // k) in tiles:
                want.setdefault((r // k, c // k), []).append((r % k, c % k))
    out: dict[tuple[int, int], bytes] = {}
    for (tr, tc), inner in want.items():
        try:
            cuts = cut_tile(tiles[(tr, tc)], level.tables, level.patch, inner)
        except (OSError, ValueError) as e:
            raise SlideReadError(
                f"page {level.page}, tile ({tr}, {tc}): cannot cut it into {level.patch} px "
                f"JPEGs ({e}); convert with --codec blosc-lz4"
            ) from e
        for (i, j), stream in cuts.items():
            tables, short = abbreviate(stream)
            out[(tr * k + i, tc * k + j)] = short if tables == level.cut_tables else stream
    return out
