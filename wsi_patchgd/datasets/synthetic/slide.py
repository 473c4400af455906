"""Writing one synthetic slide: a pyramidal JPEG-tiled TIFF with a hidden label.

File format (read alike by OpenSlide's ``generic-tiff`` driver and by tifffile):

* one TIFF (BigTIFF above ~4 GB of pixels), one tiled page per pyramid level, level 0 first,
  reduced levels marked ``NewSubfileType = 1``, each level half the size of the one before
  (sides rounded up) until the longest side is at most 1024 px. The levels are successive
  top-level pages, not SubIFDs: OpenSlide 4 ignores SubIFDs and would report a single level.
* JPEG tiles, ``PhotometricInterpretation = YCbCr`` with 2x2 chroma subsampling (tifffile's
  default for JPEG RGB, as in most scanners' files); OpenSlide and tifffile decode the tiles
  to identical RGB.
* resolution tags in centimetres, so OpenSlide reports ``openslide.mpp-x``/``-y``.

Nothing is held at full resolution: every tile of every level is rendered independently
(:class:`~wsi_patchgd.datasets.synthetic.render.Renderer`), JPEG-encoded in worker threads
and streamed to tifffile in order. Peak memory stays under 300 MB for slides up to
100k x 100k pixels.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ...errors import ConfigError
from .arrays import ByteArray, is_int
from .layout import SlideLayout
from .markers import Marker, MarkerImage, marker_image, place_markers
from .render import SUBSAMPLING, Renderer, glass_tiles
from .texture import Texture, TileTexture, procedural_texture

#: Largest accepted slide side in pixels.
MAX_SIDE = 262_144
#: Pyramid levels are added until the longest side is at most this many pixels.
_TOP_LEVEL_MAX_SIDE = 1024


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote.

    Attributes:
        path: The TIFF file.
        height: Level-0 height in pixels.
        width: Level-0 width in pixels.
        levels: ``(height, width)`` of every pyramid level, level 0 first; level ``L`` is
            downsampled by ``2**L`` (sides rounded up).
        label: The class of the slide, in ``[0, n_classes)``.
        markers: Level-0 boxes ``(y0, x0, y1, x1)`` (end-exclusive) of the marker regions that
            carry the class; they lie inside the image and inside tissue.
        mpp: Microns per pixel at level 0.
        tissue_fraction: Fraction of the slide area covered by tissue.
    """

    path: Path
    height: int
    width: int
    levels: list[tuple[int, int]]
    label: int
    markers: list[tuple[int, int, int, int]]
    mpp: float
    tissue_fraction: float


def _levels(height: int, width: int) -> list[tuple[int, int]]:
    levels = [(height, width)]
    while max(levels[-1]) > _TOP_LEVEL_MAX_SIDE:
        h, w = levels[-1]
        levels.append((-(-h // 2), -(-w // 2)))
    return levels


def _check_args(
    height: object,
    width: object,
    label: object,
    n_classes: object,
    n_markers: object,
    tile: object,
    quality: object,
    mpp: object,
    seed: object,
) -> None:
    """Raise :class:`ConfigError` naming the first invalid argument."""

    def integer(name: str, value: object, lo: int, hi: int, what: str) -> int:
        if not is_int(value) or not lo <= int(value) <= hi:  # type: ignore[call-overload]
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return int(value)  # type: ignore[call-overload]

    t = integer("tile", tile, 64, 4096, "a multiple of 16 between 64 and 4096")
    if t % 16:
        raise ConfigError(f"tile must be a multiple of 16 between 64 and 4096, got {tile!r}")
    for name, value in (("height", height), ("width", width)):
        integer(name, value, t, MAX_SIDE, f"an integer between the tile size ({t}) and {MAX_SIDE}")
    k = integer("n_classes", n_classes, 2, 64, "an integer between 2 and 64")
    integer("label", label, 0, k - 1, f"an integer in [0, n_classes) = [0, {k})")
    integer("n_markers", n_markers, 1, 256, "an integer between 1 and 256")
    integer("quality", quality, 1, 100, "an integer between 1 and 100")
    integer("seed", seed, 0, 2**63 - 1, "a non-negative integer")
    if (
        isinstance(mpp, bool)
        or not isinstance(mpp, (int, float, np.integer, np.floating))
        or not 0.01 <= float(mpp) <= 100.0
    ):
        raise ConfigError(f"mpp must be a number between 0.01 and 100 (microns), got {mpp!r}")


def _check_texture_tiles(tiles: Sequence[np.ndarray], tile: int) -> list[ByteArray]:
    if isinstance(tiles, np.ndarray) and tiles.ndim == 3:
        raise ConfigError("texture_tiles must be a sequence of RGB arrays, not a single array")
    out: list[ByteArray] = []
    for i, t in enumerate(tiles):
        arr = np.asarray(t)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ConfigError(
                f"texture_tiles[{i}] must be an RGB uint8 array (H, W, 3), got "
                f"{arr.dtype} {arr.shape}"
            )
        if arr.shape[0] < tile or arr.shape[1] < tile:
            raise ConfigError(
                f"texture_tiles[{i}] is {arr.shape[0]} x {arr.shape[1]}, smaller than the tile "
                f"size {tile}; pass tiles of at least {tile} x {tile} px"
            )
        out.append(arr)
    if not out:
        raise ConfigError("texture_tiles is empty; pass at least one RGB tile, or None")
    if len(out) > 256:
        raise ConfigError(f"texture_tiles holds {len(out)} tiles; pass at most 256")
    return out


def write_synthetic_slide(
    path: str | os.PathLike[str],
    height: int,
    width: int | None = None,
    *,
    seed: int = 0,
    label: int = 0,
    n_classes: int = 2,
    n_markers: int = 3,
    tile: int = 256,
    quality: int = 90,
    mpp: float = 0.5,
    texture_tiles: Sequence[np.ndarray] | None = None,
    texture_seed: int | None = None,
    progress: bool = False,
) -> SyntheticSlide:
    """Write a pyramidal JPEG-tiled TIFF that looks like an H&E slide with a hidden label.

    The file is written under a temporary name beside ``path`` and renamed into place once
    complete, so ``path`` never holds a half-written slide. The same arguments (and the same
    ``texture_tiles``) give a byte-identical file.

    Args:
        path: Output ``.tif`` file (replaced if it exists); its folder is created if missing.
        height: Level-0 height in pixels (``tile`` to :data:`MAX_SIDE`).
        width: Level-0 width in pixels; ``None`` for a square slide.
        seed: Seed of the layout, the texture and the marker positions.
        label: Class of the slide, in ``[0, n_classes)``.
        n_classes: Number of classes (2-64). Class 0 markers carry a neutral texture (small
            regular nuclei); class ``c > 0`` markers hold dense, dark, pleomorphic tumour-like
            nuclei whose size, density, colour and arrangement (sheets, spindle streams or
            gland-like nests) depend on ``c``.
        n_markers: Number of marker regions, each 288-384 px square at level 0 (about one to
            two 256-px patches), placed inside tissue.
        tile: TIFF tile side in pixels (multiple of 16, 64-4096).
        quality: JPEG quality (1-100).
        mpp: Microns per pixel at level 0, written as TIFF resolution (pixels per cm); the
            procedural nuclei and fibres are scaled to it.
        texture_tiles: Real tissue tiles (RGB uint8 arrays of at least ``tile`` x ``tile``
            px, centre-cropped; see :func:`texture_tiles_from_slide`) to texture the tissue
            with, placed on the level-0 tile grid with random flips and 90-degree rotations;
            ``None`` for the procedural H&E-like texture.
        texture_seed: Seed of the procedural texture when it should differ from ``seed``
            (a dataset sharing one texture builds it once: ~3 s saved per slide).
        progress: Show a tqdm progress bar over tiles.

    Returns:
        A :class:`SyntheticSlide` describing the file, including the marker boxes.

    Raises:
        ConfigError: An argument is invalid, or the markers do not fit inside the tissue.
        OSError: The file cannot be written.
    """
    width = height if width is None else width
    _check_args(height, width, label, n_classes, n_markers, tile, quality, mpp, seed)
    height, width, tile, quality = int(height), int(width), int(tile), int(quality)
    label, n_markers, seed, mpp = int(label), int(n_markers), int(seed), float(mpp)
    tiles = None if texture_tiles is None else _check_texture_tiles(texture_tiles, tile)

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream])

    feature_scale = float(np.clip(0.5 / mpp, 0.5, 2.0))
    levels = _levels(height, width)
    layout = SlideLayout(rng(1), height, width)
    marker_rng = rng(3)
    sizes = [16 * int(marker_rng.integers(18, 25)) for _ in range(n_markers)]  # 288-384 px
    positions = place_markers(marker_rng, layout, height, width, sizes)
    texture: Texture
    if tiles is None:
        tseed = seed if texture_seed is None else int(texture_seed)
        texture = procedural_texture(tseed, tile, feature_scale)
    else:
        texture = TileTexture(tiles, tile, seed)
    markers: list[Marker] = []
    for k, ((y0, x0), size) in enumerate(zip(positions, sizes, strict=True)):
        image = marker_image(
            rng(100 + k), size, label, feature_scale, texture.mean_rgb, texture.dark_rgb
        )
        per_level: list[tuple[int, int, MarkerImage] | None] = []
        for lv in range(len(levels)):
            f = 1 << lv
            per_level.append((y0 // f, x0 // f, image.pooled(f)) if size // f >= 2 else None)
        markers.append(Marker((y0, x0, y0 + size, x0 + size), per_level))
    renderer = Renderer(layout, texture, markers, glass_tiles(rng(4), tile), tile, quality, seed)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    bigtiff = height * width * 3 > 2**32 - 2**28  # compressed data stays below this
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(-(-h // tile) * -(-w // tile) for h, w in levels)
        bar = tqdm(total=total, unit="tile", desc=path.name)
    workers = max(1, min(8, os.cpu_count() or 1))
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="synthetic") as pool,
            tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer,
        ):
            for lv, (h, w) in enumerate(levels):
                jobs = [(lv, ty, tx) for ty in range(-(-h // tile)) for tx in range(-(-w // tile))]
                lv_mpp = mpp * (1 << lv)
                writer.write(
                    _encoded_tiles(pool, renderer, jobs, 4 * workers, bar),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    subsampling=SUBSAMPLING,
                    resolution=(1e4 / lv_mpp, 1e4 / lv_mpp),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if lv else 0,
                    description=f"wsi_patchgd synthetic slide; mpp={mpp}" if lv == 0 else None,
                    software="wsi_patchgd",
                    metadata=None,
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return SyntheticSlide(
        path=path,
        height=height,
        width=width,
        levels=levels,
        label=label,
        markers=[m.box for m in markers],
        mpp=mpp,
        tissue_fraction=layout.tissue_fraction,
    )


def _encoded_tiles(
    pool: ThreadPoolExecutor,
    renderer: Renderer,
    jobs: list[tuple[int, int, int]],
    prefetch: int,
    bar: Any,
) -> Iterator[bytes]:
    """JPEG tiles rendered in ``pool``, yielded in order, at most ``prefetch`` in flight."""
    pending: deque[Future[bytes]] = deque()
    todo = iter(jobs)
    for job in todo:
        pending.append(pool.submit(renderer.jpeg, *job))
        if len(pending) >= prefetch:
            break
    try:
        while pending:
            data = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(renderer.jpeg, *following))
            if bar is not None:
                bar.update(1)
            yield data
    finally:
        for future in pending:
            future.cancel()
