"""What this machine allows a lossless conversion: decoding plus encoding, then writing the bytes.

Measured in the same run as the conversions, on the same slide and with the same threads:

* **decode** - every shard-sized region of every level of the source, decoded by
  our tile reader (``read_region_chw``), nothing else;
* **decode + encode** - the same, plus encoding every 256 px chunk with the store's lossless
  codec (what ``ours`` computes, minus shard assembly and files);
* **write** - as many bytes as the ``ours`` store holds, in shard-sized files never written
  before (this VM's disk is slow on fresh blocks: a fixed cost per byte that no converter
  avoids), then deleted.

``floor s`` = decode + encode + write: the seconds of a converter with no overhead at all, since
all three use the same cores. ``ours / floor`` says how close ours is; ``naive / floor`` is the
largest speed-up over the naive baseline any lossless converter storing these bytes could show
on this machine.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHARD = 2048
CHUNK = 256


def _regions(levels: list[tuple[int, int]]) -> list[tuple[int, int, int, int, int]]:
    return [
        (lv, x, y, min(SHARD, w - x), min(SHARD, h - y))
        for lv, (w, h) in enumerate(levels)
        for y in range(0, h, SHARD)
        for x in range(0, w, SHARD)
    ]


def _decode_pass(source: Path, threads: int, encode: bool) -> tuple[float, int, int]:
    """(seconds, encoded bytes, regions) of decoding (and encoding) every region of every
    level."""
    from wsi_patchgd.readers import open_slide
    from wsi_patchgd.store.chunk_reader import BLOSC_SHUFFLE
    from wsi_patchgd.store.format import compressors

    reader = open_slide(str(source))
    levels = [(lv.width, lv.height) for lv in reader.levels]
    cfg = compressors("blosc-lz4")[0].to_dict()["configuration"]
    import numcodecs

    codec = numcodecs.Blosc(
        cname=cfg["cname"], clevel=cfg["clevel"], shuffle=BLOSC_SHUFFLE[cfg["shuffle"]]
    )

    def one(region: tuple[int, int, int, int, int]) -> int:
        lv, x, y, w, h = region
        chw = reader.read_region_chw(lv, x, y, w, h)
        if not encode:
            return 0
        n = 0
        for cy in range(0, h, CHUNK):
            for cx in range(0, w, CHUNK):
                n += len(
                    codec.encode(np.ascontiguousarray(chw[:, cy : cy + CHUNK, cx : cx + CHUNK]))
                )
        return n

    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            regions = _regions(levels)
            nbytes = sum(pool.map(one, regions))
    finally:
        reader.close()
    seconds = time.perf_counter() - t
    return seconds, nbytes, len(regions)


def _write_pass(workdir: Path, nbytes: int, threads: int, shard_bytes: int) -> float:
    """Seconds to write ``nbytes`` of incompressible data as fresh shard-sized files."""
    folder = workdir / "floor-write"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    block = np.random.default_rng(0).integers(0, 256, shard_bytes, np.uint8).tobytes()
    shard_bytes = max(1, shard_bytes)
    n = max(1, nbytes // shard_bytes)

    def one(i: int) -> None:
        path = folder / f"{i}.partial"
        with open(path, "wb") as f:
            f.write(block)
        os.rename(path, folder / str(i))

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    seconds = time.perf_counter() - t
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def machine_floor(source: Path, workdir: Path, threads: int, store_mb: float) -> dict[str, Any]:
    """The three passes on ``source`` and the floor they give (see the module docstring)."""
    decode_s, _, _ = _decode_pass(source, threads, encode=False)
    decode_encode_s, encoded, n_shards = _decode_pass(source, threads, encode=True)
    write_s = _write_pass(workdir, int(store_mb * 1e6), threads, int(store_mb * 1e6 / n_shards))
    return {
        "decode_s": decode_s,
        "decode_encode_s": decode_encode_s,
        "encoded_mb": encoded / 1e6,
        "write_s": write_s,
        "write_mb_per_s": store_mb / write_s,
        "floor_s": decode_encode_s + write_s,
    }
