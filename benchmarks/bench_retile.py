"""Lossless re-tiling of a JPEG tile vs decoding it: ms per source tile and bytes, same run.

One 512 px region of the real CMU-1 slide (``../shared/data``), JPEG-encoded 4:4:4 at quality 90
(what a 512 px pyramidal TIFF tile is), cut into 16 patches of 128 px three ways:

* **cut** - what ``convert --codec jpeg`` does when the patch size divides the tile size
  (``wsi_patchgd.readers.jpeg_crop.cut_tile``: DCT coefficients sliced on block boundaries,
  abbreviated streams sharing the source's tables): lossless, no decode;
* **decode + blosc-lz4** - what the converter does otherwise (decode, then the default lossless
  codec per patch);
* **decode + JPEG q95** - a lossy re-encode, for reference (what a naive "re-tile" does).

Each is timed best-of-``--repeats`` over 10 calls; bytes are relative to the source tile, and
every cut patch is checked to decode to exactly the source's pixels.

Usage::

    .venv/bin/python benchmarks/bench_retile.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._common import data_dir, log, parser, start, table, write_json  # noqa: E402

NAME = "bench_retile"
TILE, PATCH = 512, 128


def main(argv: list[str] | None = None) -> None:
    """Time the three ways on one real tile and print the table."""
    import imagecodecs
    import numcodecs
    import openslide

    from wsi_patchgd.readers.jpeg_crop import abbreviate, cut_tile
    from wsi_patchgd.store.chunk_reader import BLOSC_SHUFFLE
    from wsi_patchgd.store.format import compressors

    ap = parser(__doc__, NAME, None, "(unused)", "fewer repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many (5)")
    args = ap.parse_args(argv)
    json_path, info = start(args, NAME)
    repeats = 2 if args.quick else args.repeats
    slide = data_dir() / "slides" / "cmu-1-small-region.svs"
    with openslide.OpenSlide(str(slide)) as s:
        img = np.asarray(s.read_region((800, 1200), 0, (TILE, TILE)).convert("RGB")).copy()
    src = bytes(imagecodecs.jpeg_encode(img, level=90, subsampling=(1, 1)))
    decoded = np.asarray(imagecodecs.jpeg_decode(src))
    n = TILE // PATCH
    want = [(i, j) for i in range(n) for j in range(n)]
    cfg = compressors("blosc-lz4")[0].to_dict()["configuration"]
    lz4 = numcodecs.Blosc(
        cname=cfg["cname"], clevel=cfg["clevel"], shuffle=BLOSC_SHUFFLE[cfg["shuffle"]]
    )

    def cut() -> list[bytes]:
        return list(cut_tile(src, None, PATCH, want).values())

    def blosc() -> list[bytes]:
        a = imagecodecs.jpeg_decode(src)
        return [
            lz4.encode(
                np.ascontiguousarray(
                    a[i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH].transpose(2, 0, 1)
                )
            )
            for i, j in want
        ]

    def q95() -> list[bytes]:
        a = imagecodecs.jpeg_decode(src)
        return [
            bytes(
                imagecodecs.jpeg_encode(
                    a[i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH],
                    level=95,
                    subsampling=(1, 1),
                )
            )
            for i, j in want
        ]

    # the cut patches decode to the source's pixels, exactly
    for (i, j), patch in zip(want, cut(), strict=True):
        got = np.asarray(imagecodecs.jpeg_decode(patch))
        ref = decoded[i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH]
        if not np.array_equal(got, ref):
            raise SystemExit(f"cut patch {(i, j)} differs from the source (max |diff| "
                             f"{np.abs(got.astype(int) - ref).max()})")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for name, fn, lossless in [
        ("cut (lossless, no decode)", cut, True),
        ("decode + blosc-lz4", blosc, True),
        ("decode + JPEG q95 (lossy)", q95, False),
    ]:
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(10):
                out = fn()
            best = min(best, (time.perf_counter() - t) / 10)
        stored = sum(len(abbreviate(b)[1]) if fn is cut else len(b) for b in out)
        rows.append(
            {
                "method": name,
                "ms_per_tile": best * 1e3,
                "tiles_per_s": 1 / best,
                "bytes_over_source": stored / len(src),
                "lossless": lossless,
            }
        )
        log(f"{name}: {best * 1e3:.2f} ms per {TILE} px tile")
    print()
    print(
        table(
            ["method", "ms/tile", "tiles/s", "bytes / source", "lossless"],
            [
                [
                    r["method"],
                    r["ms_per_tile"],
                    r["tiles_per_s"],
                    r["bytes_over_source"],
                    r["lossless"],
                ]
                for r in rows
            ],  # fmt: skip
        )
    )
    print(
        f"\none {TILE} px 4:4:4 q90 tile of CMU-1 ({len(src):,} bytes) -> {len(want)} x {PATCH} px;"
        " 'cut' stores abbreviated streams (the tables once per level, in the codec config)."
    )
    write_json(
        json_path,
        {"benchmark": NAME, "machine": info, "tile": TILE, "patch": PATCH,
         "source_bytes": len(src), "rows": rows},
    )  # fmt: skip
    print(f"JSON: {json_path}")


if __name__ == "__main__":
    main()
