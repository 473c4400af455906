"""Lossless cuts of a JPEG tile into smaller JPEGs, in the DCT domain (``jpegtran -crop``).

A JPEG is a grid of 8 x 8 blocks of quantised DCT coefficients. Slicing that grid on block
boundaries and writing each slice with the same quantisation tables gives JPEGs whose pixels
are exactly those of the source tile there, with no decode and no re-encode, as long as a
decoder reconstructs each block on its own. That holds when no component is subsampled
(4:4:4, RGB-coded Aperio JPEG): :func:`cut_problem` says so, or says why a tile cannot be cut
exactly. With chroma subsampling (4:2:0, 4:2:2) cuts must also fall on MCU boundaries (16 px),
and even then the decoder's "fancy" chroma upsampling reads chroma across the cut, so pixels at
the patch edges differ from the decoded-then-cropped tile: such levels are not cut.

The coefficients are read and written by `jpeglib <https://pypi.org/project/jpeglib/>`_ (which
bundles its own libjpeg builds: nothing to install outside pip). Its interface takes file
paths, so :func:`cut_tile` works in a scratch directory (``/dev/shm`` where there is one).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

_SOF_HUFFMAN = {0xC0, 0xC1}  # baseline and extended sequential, Huffman coded
_SOF_ANY = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's frame header (SOF) says.

    Attributes:
        marker: the SOF marker (0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...).
        height, width: the frame's size in pixels.
        sampling: (horizontal, vertical) sampling factors of each component.
    """

    marker: int
    height: int
    width: int
    sampling: tuple[tuple[int, int], ...]

    @property
    def subsampled(self) -> bool:
        """Whether any component is stored at a lower resolution than another."""
        return len(set(self.sampling)) > 1


def frame_of(data: bytes) -> JpegFrame:
    """The frame header of a JPEG stream (a TIFF tile's abbreviated stream is enough).

    Raises:
        ValueError: no frame header before the first scan.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG stream: marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_ANY:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            n = data[i + 9]
            comps = data[i + 10 : i + 10 + 3 * n]
            sampling = tuple((comps[3 * k + 1] >> 4, comps[3 * k + 1] & 15) for k in range(n))
            return JpegFrame(marker, h, w, sampling)
        if marker == 0xDA:
            break
        i += 2 + length
    raise ValueError("no JPEG frame header (SOF) before the scan")


def cut_problem(frame: JpegFrame, tile: int, patch: int) -> str | None:
    """Why ``tile`` px JPEG tiles with this frame cannot be cut into ``patch`` px JPEGs whose
    pixels are exactly the tile's (None: they can)."""
    if tile % patch:
        return cut_problem_size(tile, patch)
    if frame.marker not in _SOF_HUFFMAN:
        return f"JPEG process 0x{frame.marker:X} (only sequential Huffman JPEG is cut)"
    if (frame.height, frame.width) != (tile, tile):
        return f"JPEG frame {frame.width} x {frame.height} is not the {tile} px tile"
    if frame.subsampled:
        h = max(s[0] for s in frame.sampling)
        v = max(s[1] for s in frame.sampling)
        if patch % (8 * h) or patch % (8 * v):
            return (
                f"chroma subsampled {h}x{v}: {patch} px patches do not fall on the "
                f"{8 * h} x {8 * v} px MCU grid"
            )
        return (
            f"chroma subsampled {h}x{v}: cut patches decode differently at their edges "
            "(the decoder's chroma upsampling reads across the cut)"
        )
    if patch % 8:
        return f"{patch} px patches do not fall on the 8 px DCT block grid"
    return None


def cut_problem_size(tile: int, patch: int) -> str | None:
    """Why ``tile`` px tiles cannot be cut into ``patch`` px patches whatever their coding."""
    return f"{tile} px tiles are not a multiple of {patch} px patches" if tile % patch else None


def with_tables(data: bytes, tables: bytes | None) -> bytes:
    """A complete JPEG stream from a TIFF tile's abbreviated stream and the TIFF's
    JPEGTables (the tables' segments inserted after the tile's SOI)."""
    if not tables:
        return data
    body = tables[2:-2] if tables[-2:] == b"\xff\xd9" else tables[2:]
    return data[:2] + body + data[2:]


def _scratch_dir() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def cut_tile(
    data: bytes, tables: bytes | None, patch: int, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Cut one JPEG tile into ``patch`` px JPEGs, losslessly (DCT coefficients sliced on
    block boundaries, same quantisation tables; each output is a complete JPEG stream).

    Only call it on tiles for which :func:`cut_problem` returns None: for those, each patch
    decodes to exactly the pixels of the decoded tile there.

    Args:
        data: the tile's stream as the TIFF stores it.
        tables: the TIFF's JPEGTables, or None.
        patch: the patch side (a multiple of 8).
        wanted: (row, column) of the patches to cut, in patches within the tile.

    Returns:
        (row, column) -> the patch's JPEG stream.

    Raises:
        ValueError: a wanted patch lies outside the tile's coefficients.
        OSError: jpeglib cannot read the tile.
    """
    import jpeglib

    b = patch // 8
    out: dict[tuple[int, int], bytes] = {}
    with tempfile.TemporaryDirectory(prefix="wsi-cut-", dir=_scratch_dir()) as scratch:
        src = os.path.join(scratch, "tile.jpg")
        with open(src, "wb") as fh:
            fh.write(with_tables(data, tables))
        jpg = jpeglib.read_dct(src)
        y, (cb, cr), qt = jpg.load()
        tbl = [int(t) for t in jpg.quant_tbl_no]
        comps = [c for c in (y, cb, cr) if c is not None]
        for i, j in wanted:
            if (i + 1) * b > y.shape[0] or (j + 1) * b > y.shape[1]:
                raise ValueError(f"patch ({i}, {j}) lies outside the {y.shape[:2]} block tile")
            parts = []
            for c in comps:  # a subsampled component has fewer blocks per patch
                by, bx = b * c.shape[0] // y.shape[0], b * c.shape[1] // y.shape[1]
                parts.append(c[i * by : (i + 1) * by, j * bx : (j + 1) * bx].copy())
            part = jpeglib.from_dct(
                Y=parts[0],
                Cb=parts[1] if len(parts) > 1 else None,
                Cr=parts[2] if len(parts) > 2 else None,
                qt=qt,
                quant_tbl_no=tbl,
            )
            dst = os.path.join(scratch, f"{i}.{j}.jpg")
            part.write_dct(dst)
            with open(dst, "rb") as fh:
                out[(i, j)] = fh.read()
    return out


_TABLE_MARKERS = {0xDB, 0xC4}  # DQT, DHT
_DROPPED_MARKERS = _TABLE_MARKERS | {0xE0}  # and APP0 (JFIF: the codec names the colour space)


def abbreviate(stream: bytes) -> tuple[bytes, bytes]:
    """(tables, abbreviated stream) of a complete JPEG stream: the quantisation and Huffman
    tables as a tables-only stream (what a TIFF's JPEGTables holds), and the stream without
    them (and without its JFIF marker), which decodes given those tables."""
    tables, rest = [b"\xff\xd8"], [b"\xff\xd8"]
    i = 2
    while i + 4 <= len(stream):
        marker = stream[i + 1]
        (length,) = struct.unpack(">H", stream[i + 2 : i + 4])
        if marker == 0xDA:
            break
        seg = stream[i : i + 2 + length]
        if marker in _TABLE_MARKERS:
            tables.append(seg)
        elif marker not in _DROPPED_MARKERS:
            rest.append(seg)
        i += 2 + length
    tables.append(b"\xff\xd9")
    rest.append(stream[i:])
    return b"".join(tables), b"".join(rest)
