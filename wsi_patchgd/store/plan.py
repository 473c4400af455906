"""What a conversion will write: its options and the store's levels, planned from the source.

:class:`ConvertOptions` says how slides become stores; :func:`plan_levels` turns a source's
pyramid into the store's levels (:class:`LevelPlan`: the source's own level at each 2x step
where there is one, else a 2x downsample of the level above), and :func:`with_passthrough`
marks the levels whose source JPEG tiles are copied unchanged or cut losslessly into patches.
:func:`source_identity` is what "the same source" means when a store is resumed or replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import WsiPatchGDError
from ..io import StorageOptions, filesystem
from ..readers import SlideReader
from ..readers.tiff_tiles import JpegLevel
from ..tissue import TissueParams
from .format import compressors


@dataclass(frozen=True)
class ConvertOptions:
    """How slides become stores.

    Attributes:
        patch_size: chunk side P (the training patch size), pixels.
        shard_patches: shard side in patches (shard = P * shard_patches pixels).
        max_levels: at most this many levels (None: down to ``min_level_size``).
        min_level_size: stop adding levels when the longer side would fall below this.
        codec: lossless codec name (see :data:`wsi_patchgd.store.format.CODECS`).
        reader: ``auto`` or a reader name.
        tissue: tissue-detection parameters (recorded in the store).
        mask_max_size: the mask is computed on the finest level whose longer side is <= this
            (1024 keeps a conversion's peak memory well under 500 MB; the per-patch tables
            are area-weighted, so a 256 px patch of a 64k slide still gets a fraction from
            4 x 4 mask pixels).
        mask_patch_pixels: the mask needs no more than this many pixels along a level-0 patch
            side: of the levels within ``mask_max_size``, the coarsest that still has them is
            used (a small slide's 1024 px level would be finer than its patch grid needs; an
            8192 px slide with 256 px patches gets its mask from the 512 px level).
        overwrite: rebuild complete stores.
        lock_wait: seconds to wait for a store another job is converting before reporting it
            ``skipped`` (locked by another job).
        lock_stale_after: a lock whose heartbeat (renewed every quarter of this) is older than
            this many seconds is taken over; so is one whose process on this machine is gone.
    """

    patch_size: int = 256
    shard_patches: int = 8
    max_levels: int | None = None
    min_level_size: int = 512
    codec: str = "blosc-lz4"
    reader: str = "auto"
    tissue: TissueParams = field(default_factory=TissueParams)
    mask_max_size: int = 1024
    mask_patch_pixels: int = 16
    overwrite: bool = False
    lock_wait: float = 5.0
    lock_stale_after: float = 120.0

    def __post_init__(self) -> None:
        if self.patch_size < 8 or self.patch_size > 8192:
            raise WsiPatchGDError(f"patch_size={self.patch_size}: use 8..8192 (256 is usual)")
        if self.shard_patches < 1:
            raise WsiPatchGDError(f"shard_patches={self.shard_patches}: must be >= 1")
        if self.mask_max_size < 1 or self.mask_patch_pixels < 1:
            raise WsiPatchGDError(
                f"mask_max_size={self.mask_max_size}, mask_patch_pixels="
                f"{self.mask_patch_pixels}: both must be >= 1"
            )
        if self.max_levels is not None and self.max_levels < 1:
            raise WsiPatchGDError(f"levels={self.max_levels}: must be >= 1")
        compressors(self.codec)  # validates the name

    @property
    def shard_size(self) -> int:
        """Shard side in pixels."""
        return self.patch_size * self.shard_patches


@dataclass(frozen=True)
class LevelPlan:
    """One level of the store to write.

    Attributes:
        index: the level's number in the store.
        height, width: its size in pixels.
        downsample: relative to level 0.
        origin: ``"source:<j>"`` (read from the source's level j) or ``"downsample:<i>"``
            (2x2 mean of the store's level i, written before it).
        jpeg: the source page whose JPEG tiles are stored unchanged or cut losslessly into
            patches (codec ``jpeg``), if any.
        jpeg_note: what happens to the source level's JPEG tiles and, where they are decoded
            instead, why (:meth:`~wsi_patchgd.readers.tiff_tiles.JpegLevel.describe`); None
            where the source level has no JPEG tiles to consider.
    """

    index: int
    height: int
    width: int
    downsample: float
    origin: str
    jpeg: JpegLevel | None = None
    jpeg_note: str | None = None


def plan_levels(reader: SlideReader, options: ConvertOptions) -> list[LevelPlan]:
    """Levels of the store: source levels at 2x steps where they exist, else 2x downsamples."""
    base = reader.levels[0]
    plans = [LevelPlan(0, base.height, base.width, 1.0, "source:0")]
    while options.max_levels is None or len(plans) < options.max_levels:
        prev = plans[-1]
        h, w = prev.height // 2, prev.width // 2
        if max(h, w) < options.min_level_size or min(h, w) < 1:
            break
        ds = 2.0 ** len(plans)
        origin = f"downsample:{prev.index}"
        for j, lv in enumerate(reader.levels):
            if (
                j > 0
                and abs(lv.downsample / ds - 1) < 0.02
                and abs(lv.height - h) <= 1
                and abs(lv.width - w) <= 1
                and prev.origin.startswith("source")
            ):
                origin, h, w, ds = f"source:{j}", lv.height, lv.width, lv.downsample
                break
        plans.append(LevelPlan(len(plans), h, w, ds, origin))
    return plans


def with_passthrough(plans: list[LevelPlan], pages: list[JpegLevel]) -> list[LevelPlan]:
    """Mark the source levels whose JPEG tiles line up with the chunk grid (same size, and a
    tile side the patch size equals or divides, coded so that cutting is exact) to be copied
    or cut unchanged; note on the others why their tiles are decoded instead."""
    by_size: dict[tuple[int, int], JpegLevel] = {}
    for jl in pages:  # a page that can be kept wins over one of the same size that cannot
        seen = by_size.get((jl.height, jl.width))
        if seen is None or (seen.problem and not jl.problem):
            by_size[(jl.height, jl.width)] = jl
    out = []
    for pl in plans:
        page = by_size.get((pl.height, pl.width)) if pl.origin.startswith("source:") else None
        if page is not None:
            pl = replace(pl, jpeg=None if page.problem else page, jpeg_note=page.describe())
        out.append(pl)
    return out


def source_identity(source: str, storage_options: StorageOptions | None) -> dict[str, Any]:
    """Name, size and modification time of the source file (what 'same source' means)."""
    fs, path = filesystem(source, storage_options)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated")
    if hasattr(mtime, "isoformat"):
        mtime = mtime.isoformat()
    return {
        "name": os.path.basename(path.rstrip("/")),
        "url": source,
        "size": int(info.get("size") or 0),
        "mtime": mtime if isinstance(mtime, (int, float, str)) or mtime is None else str(mtime),
    }
