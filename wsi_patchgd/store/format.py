"""The on-disk layout of one slide store (a Zarr v3 group), in one place.

```
<slide>.zarr/
  zarr.json                 group; attributes: "ome" (OME-NGFF 0.5 multiscales + omero) and
                            "wsi_patchgd" (ours; "complete": true is written last)
  0, 1, 2, ...              uint8 arrays (c, y, x) = (3, H_l, W_l); chunk (3, P, P) where P is the
                            patch size; shards of (3, S, S) with S = P * shard_patches
  tissue/mask               bool (h_m, w_m): tissue mask at a coarse level (downsample recorded)
  tissue/fraction/<level>   float32 (n_h, n_w): tissue fraction of every P x P patch of a level
  .progress/<level>/<sy>.<sx>  empty marker objects while a conversion runs (deleted at the end);
  .progress/<level>/all     the whole level is written (a damaged store being repaired)
<slide>.zarr.lock           beside the store while a conversion holds it (owner, host, pid,
                            heartbeat; see :class:`wsi_patchgd.store.convert.StoreLock`)
<slide>.zarr.rebuild        beside it during ``--overwrite``: the new store, switched in when
                            complete and verified (readers use it while the store is not
                            complete)
<slide>.zarr.old            local ``--overwrite`` only, for an instant: the old store moved aside
```

"complete" means complete: it is written only after every node of :func:`required_nodes` was
opened and found with the shape the attributes give. The keys of the "wsi_patchgd" attributes,
typed: :class:`wsi_patchgd.store.meta.StoreMeta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
ATTR_KEY = "wsi_patchgd"
OME_VERSION = "0.5"
PROGRESS_PREFIX = ".progress"
FILL_VALUE = 255  # white: glass / padding

REBUILD_SUFFIX = ".rebuild"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"

CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "none", "jpeg")
#: ``jpeg``: levels whose source tiles are JPEG of exactly the patch size keep those tiles
#: unchanged (:mod:`wsi_patchgd.store.jpeg`); every other level is written with blosc-lz4.


def compressors(codec: str, level: int | None = None) -> Any:
    """Zarr v3 compressor list for a codec name (all lossless).

    ``jpeg`` means blosc-lz4 for the levels that are not source JPEG tiles (see
    :mod:`wsi_patchgd.store.jpeg`).
    ``blosc-lz4`` (default): LZ4 level 9 after Blosc's bit shuffle. On the real tissue texture of
    the conversion benchmark (planar 256 px chunks) that is ratio 1.69 at ~410 MP/s encode and
    ~560 MP/s decode per core, against 1.43 at ~370 / ~850 without the shuffle (the layout
    before 0.2: such stores still read, their codec settings are in their metadata); the
    conversion writes 15 % fewer bytes, which on disks where writing is the bottleneck is 15 %
    faster. ``blosc-zstd`` (ratio ~1.8) and ``zstd`` trade ~3x slower encoding for ~8 % less.
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec in ("blosc-lz4", "jpeg"):
        return [BloscCodec(cname="lz4", clevel=level or 9, shuffle="bitshuffle", typesize=1)]
    if codec == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=level or 1, shuffle="noshuffle", typesize=1)]
    if codec == "zstd":
        return [ZstdCodec(level=level or 3)]
    if codec == "none":
        return None
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def ome_multiscales(name: str, downsamples: list[float], mpp: float | None) -> dict[str, Any]:
    """OME-NGFF 0.5 ``ome`` attribute for levels with the given downsamples."""
    unit = {"unit": "micrometer"} if mpp else {}
    px = mpp or 1.0
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, px * d, px * d]}],
        }
        for i, d in enumerate(downsamples)
    ]
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": datasets,
                "type": "mean (2x2)",
            }
        ],
        "omero": {
            "channels": [
                {"label": c, "color": col, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                for c, col in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))
            ],
            "rdefs": {"model": "color"},
        },
    }


def required_nodes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Every group and array a complete store has, for its ``wsi_patchgd`` attributes: node
    path -> expected array shape (None: a group, or the mask, whose shape is its own)."""
    patch = int(meta["patch_size"])
    nodes: dict[str, tuple[int, ...] | None] = {}
    for i, lv in enumerate(meta["levels"]):
        nodes[str(i)] = tuple(int(n) for n in lv["shape"])
    nodes["tissue"] = None
    nodes["tissue/mask"] = None
    nodes["tissue/fraction"] = None
    for i, lv in enumerate(meta["levels"]):
        h, w = (int(n) for n in lv["shape"][1:])
        nodes[f"tissue/fraction/{i}"] = (-(-h // patch), -(-w // patch))
    return nodes
