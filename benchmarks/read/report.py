"""The read benchmark's table and verdicts, from its result document."""

from __future__ import annotations

from typing import Any

from benchmarks._common import table
from benchmarks.read.settings import TARGET_SPEEDUP


def report(doc: dict[str, Any]) -> str:
    """The printed table of patches/s per method and the verdict lines."""
    med = doc["patches_per_s_median"]
    os1 = med["openslide"]
    labels = [
        ("ours_batch", f"ours: SlideStore.read_patches, batch {doc['batch']} (local)"),
        ("ours_single", "ours: SlideStore.read_patches, batch 1 (local)"),
        ("ours_jpeg_batch", f"ours, --codec jpeg store: read_patches, batch {doc['batch']}"),
        ("openslide", "OpenSlide read_region, 1 thread"),
        ("openslide_2threads", "OpenSlide read_region, 2-thread pool"),
        ("floor", "floor: pread + decode, 1 thread, no zarr"),
        ("ours_s3_batch", f"ours: read_patches, batch {doc['batch']} (s3:// moto)"),
        ("ours_s3_single", "ours: read_patches, batch 1 (s3:// moto)"),
    ]
    rows = [[label, med[k], 1000.0 / med[k], med[k] / os1] for k, label in labels if k in med]
    lines = [
        f"random {doc['patch']}^2 tissue patches of level 0, {doc['size']}^2 slide, "
        f"{doc['patches_per_repeat']} patches x {doc['repeats']} repeats (median)",
        table(["method", "patches/s", "ms/patch", "x OpenSlide"], rows),
        "",
        f"ours (batch {doc['batch']}) / OpenSlide (1 thread) = "
        f"{doc['ratio_ours_batch_over_openslide']:.2f}x (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{'met' if doc['target_met'] else 'NOT met'}); / OpenSlide (2 threads) = "
        f"{doc['ratio_ours_batch_over_openslide_2threads']:.2f}x",
        f"latency of one patch: ours {doc['latency_ms_ours_single']:.2f} ms, "
        f"OpenSlide {doc['latency_ms_openslide']:.2f} ms; max |ours - OpenSlide| = "
        f"{doc['check_max_abs_diff']}",
        f"--codec jpeg store: {doc['ratio_ours_jpeg_batch_over_openslide']:.2f}x OpenSlide, "
        f"max |diff| = {doc['check_max_abs_diff_jpeg']}, {doc['store_jpeg_mb']:,.0f} MB vs "
        f"{doc['store_mb']:,.0f} MB (blosc-lz4)",
    ]
    if "ratio_ours_batch_over_floor" in doc:
        lines.append(
            f"ours (batch) / floor = {doc['ratio_ours_batch_over_floor']:.2f} "
            "(1.0 = as fast as a bare pread + decode loop)"
        )
    return "\n".join(lines)
