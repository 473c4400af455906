"""Plain, OME and pyramidal TIFF (and SVS, which is TIFF) through tifffile + imagecodecs.

Tiles are read with positional reads (``os.pread`` locally, byte-range requests through fsspec
for URLs) and decoded by tifffile's own segment decoder, so several threads decode at once
without a file lock. On the real Aperio test slides this decodes byte-identically to OpenSlide
and about 3x faster per core.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np

from ..errors import SlideReadError
from ..io import StorageOptions, filesystem, is_remote, local_path
from .base import Level, SlideReader, to_rgb_uint8

_FAST_AXES = {"YXS", "YX"}


class TiffReader(SlideReader):
    """A TIFF read with tifffile: its pyramid (SVS, OME, SubIFD, or successive tiled pages)."""

    name = "tifffile"

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage_options: StorageOptions | None = None,
    ) -> None:
        import tifffile

        self.source = str(path)
        self._fd: int | None = None
        self._fh: Any = None
        self._fs: Any = None
        try:
            if is_remote(self.source):
                self._fs, self._fspath = filesystem(self.source, storage_options)
                self._fh = self._fs.open(self._fspath, "rb")
                self._tif = tifffile.TiffFile(self._fh)
                self._size = int(self._fs.size(self._fspath))
            else:
                p = local_path(self.source)
                self._tif = tifffile.TiffFile(p)
                self._fd = os.open(p, os.O_RDONLY)
                self._size = p.stat().st_size
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
            raise SlideReadError(f"{self.source}: not a TIFF tifffile reads ({exc})") from exc
        self._pages = self._find_levels()
        h0, w0 = _Page(self._pages[0]).shape
        self.levels = tuple(
            Level(w, h, (w0 / w + h0 / h) / 2.0)  # as OpenSlide computes downsamples
            for h, w in (_Page(pg).shape for pg in self._pages)
        )
        self._check_not_truncated()
        self.properties = self._metadata()
        self.vendor = "aperio" if self._tif.is_svs else ("ome" if self._tif.is_ome else "tiff")
        self.format = self.vendor
        self._zarr_cache: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- structure -------------------------------------------------------------------------
    def _find_levels(self) -> list[Any]:
        tif = self._tif
        if not tif.series or not len(tif.pages):
            first = _first_ifd_offset(tif)
            if first is not None and first >= self._size:
                raise SlideReadError(
                    f"{self.source}: truncated: its first image directory is at byte {first} "
                    f"but the file has {self._size} bytes; copy or download it again"
                )
            raise SlideReadError(f"{self.source}: TIFF holds no image")
        series = tif.series[0]
        levels = [lv.keyframe for lv in series.levels] if len(series.levels) > 1 else []
        if not levels:
            # Successive tiled pages halving in size (OpenSlide's "generic tiled TIFF").
            pages: list[Any] = [p for p in tif.pages if getattr(p, "shape", None)]
            levels = [series.keyframe]
            for p in pages[1:]:
                prev = levels[-1]
                ph, pw = _Page(p).shape
                qh, qw = _Page(prev).shape
                if p.is_tiled and pw < qw and ph < qh and abs(qw / pw - qh / ph) < 0.02 * qw / pw:
                    levels.append(p)
        return levels

    def _check_not_truncated(self) -> None:
        for p in self._pages:
            ends = np.asarray(p.dataoffsets, np.int64) + np.asarray(p.databytecounts, np.int64)
            if ends.size and int(ends.max()) > self._size:
                raise SlideReadError(
                    f"{self.source}: truncated: image data runs to byte {int(ends.max())} but "
                    f"the file has {self._size} bytes; copy or download it again"
                )

    def _metadata(self) -> dict[str, Any]:
        tif = self._tif
        base = self._pages[0]
        props: dict[str, Any] = {"tiff.pages": len(tif.pages)}
        desc = base.description or ""
        if tif.is_svs:
            m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
            self.mpp = float(m.group(1)) if m else None
            m = re.search(r"AppMag\s*=\s*([0-9.]+)", desc)
            self.objective_power = float(m.group(1)) if m else None
        elif tif.is_ome and tif.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
            self.mpp = float(m.group(1)) if m else None
        if self.mpp is None:
            self.mpp = _mpp_from_resolution(base)
        props["tiff.compression"] = str(getattr(base.compression, "name", base.compression))
        props["tiff.photometric"] = str(getattr(base.photometric, "name", base.photometric))
        props["tiff.tile"] = list(base.tile) if base.is_tiled else None
        props["tiff.dtype"] = str(base.dtype)
        return props

    # -- pixels ----------------------------------------------------------------------------
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        if _Page(page).axes in _FAST_AXES and page.planarconfig in (1, None, 0):
            return to_rgb_uint8(self._read_segments(page, x, y, width, height))
        return to_rgb_uint8(self._read_zarr(level, x, y, width, height))

    def _read_chw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        page = self._pages[level]
        if (
            _Page(page).axes != "YXS"
            or page.planarconfig not in (1, None, 0)
            or int(page.samplesperpixel) != 3
            or page.dtype != np.uint8
        ):
            return None
        return self._read_segments(page, x, y, width, height, chw=True)

    def _read_segments(
        self, page: Any, x: int, y: int, w: int, h: int, chw: bool = False
    ) -> np.ndarray:
        """Decode the tiles (or strips) covering a region and assemble them: (h, w, samples),
        or with ``chw`` (3, h, w), each tile transposed while it is in cache."""
        H, W = _Page(page).shape
        samples = int(page.samplesperpixel)
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
        else:
            th, tw = int(page.rowsperstrip or H), W
        nx = (W + tw - 1) // tw
        ty0, ty1 = y // th, (y + h - 1) // th
        tx0, tx1 = x // tw, (x + w - 1) // tw
        idx = [ty * nx + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        datas = self._read_bytes(page, idx)
        out = np.empty((samples, h, w) if chw else (h, w, samples), dtype=page.dtype)
        decode = page.decode
        kw: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
        if page.jpegtables is not None:
            kw["jpegtables"] = page.jpegtables
        if getattr(page, "jpegheader", None) is not None:
            kw["jpegheader"] = page.jpegheader
        for i, data in zip(idx, datas, strict=True):
            seg, _, _ = decode(data, i, **kw)
            ty, tx = divmod(i, nx)
            sy, sx = ty * th, tx * tw
            if seg is None:
                seg = np.zeros((1, 1, th, tw, samples), page.dtype)
            seg = seg.reshape(seg.shape[-3], seg.shape[-2], seg.shape[-1])
            # intersection of this segment with the requested region
            ay0, ax0 = max(sy, y), max(sx, x)
            ay1 = min(sy + seg.shape[0], y + h, H)
            ax1 = min(sx + seg.shape[1], x + w, W)
            part = seg[ay0 - sy : ay1 - sy, ax0 - sx : ax1 - sx]
            if chw:
                out[:, ay0 - y : ay1 - y, ax0 - x : ax1 - x] = part.transpose(2, 0, 1)
            else:
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = part
        return out

    def _read_bytes(self, page: Any, idx: list[int]) -> list[bytes | None]:
        offs = page.dataoffsets
        counts = page.databytecounts
        if self._fd is not None:
            return [os.pread(self._fd, counts[i], offs[i]) if counts[i] else None for i in idx]
        nonempty = [i for i in idx if counts[i]]
        blobs = self._fs.cat_ranges(
            [self._fspath] * len(nonempty),
            [offs[i] for i in nonempty],
            [offs[i] + counts[i] for i in nonempty],
        )
        got = dict(zip(nonempty, blobs, strict=True))
        return [got.get(i) for i in idx]

    def _read_zarr(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import zarr

        with self._lock:
            if level not in self._zarr_cache:
                series = self._tif.series[0]
                store = series.aszarr(level=level) if len(series.levels) > 1 else series.aszarr()
                self._zarr_cache[level] = zarr.open(store, mode="r")
            arr = self._zarr_cache[level]
            axes = _Page(self._pages[level]).axes
            sel: list[Any] = []
            for ax in axes:
                sel.append(
                    slice(y, y + h)
                    if ax == "Y"
                    else slice(x, x + w)
                    if ax == "X"
                    else slice(None)
                    if ax in "SC"
                    else 0
                )
            data = np.asarray(arr[tuple(sel)])
        kept = [a for a in axes if a in "YXSC"]
        if "S" in kept or "C" in kept:
            ch = "S" if "S" in kept else "C"
            data = np.moveaxis(data, kept.index(ch), -1)
            if data.shape[-1] > 4:
                data = data[..., :3]
        return data

    def close(self) -> None:
        self._tif.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._fh is not None:
            self._fh.close()


class _Page:
    """Normalised (H, W) and axes of a TIFF page."""

    def __init__(self, page: Any) -> None:
        axes = page.axes
        shape = page.shape
        self.axes = axes
        self.shape = (int(shape[axes.index("Y")]), int(shape[axes.index("X")]))


def _first_ifd_offset(tif: Any) -> int | None:
    """Offset of the first IFD from the TIFF header (classic or BigTIFF)."""
    fh = tif.filehandle
    try:
        fh.seek(0)
        head = fh.read(16)
    except OSError:
        return None
    order = "<" if head[:2] == b"II" else ">"
    version = int.from_bytes(head[2:4], "little" if order == "<" else "big")
    if version == 43:
        return int.from_bytes(head[8:16], "little" if order == "<" else "big")
    return int.from_bytes(head[4:8], "little" if order == "<" else "big")


def _mpp_from_resolution(page: Any) -> float | None:
    try:
        xres = page.tags["XResolution"].value
        unit = int(page.tags["ResolutionUnit"].value)
    except KeyError:
        return None
    num, den = xres if isinstance(xres, tuple) else (xres, 1)
    if not num or not den:
        return None
    px_per_unit = num / den
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2 and px_per_unit > 1000:  # inch, and clearly a microscope resolution
        return 25400.0 / px_per_unit
    return None
