"""The conversion benchmark's summary per size and mode (ratios, targets) and its table."""

from __future__ import annotations

from typing import Any

from benchmarks._common import table
from benchmarks.convert.settings import OURS, TARGET_RSS_MB, target_speedup


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and mode of ours: ratios to naive and whether the targets are met."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        naive = next((r for r in rows if r["size"] == size and r["impl"] == "naive"), None)
        for impl in OURS:
            ours = next((r for r in rows if r["size"] == size and r["impl"] == impl), None)
            if ours is None:
                continue
            s: dict[str, Any] = {"size": size, "impl": impl, "codec": OURS[impl]}
            s["ours_peak_rss_mb"] = ours["peak_rss_mb"]
            s["rss_target_met"] = ours["peak_rss_mb"] < TARGET_RSS_MB
            s["ours_max_abs_diff_vs_openslide"] = ours["check_max_abs_diff"]
            s["ours_identical_to_openslide"] = ours["check_max_abs_diff"] == 0
            if naive:
                s["speedup_level0"] = ours["mp_per_s_level0"] / naive["mp_per_s_level0"]
                s["speedup_all_levels"] = ours["mp_per_s_all_levels"] / naive["mp_per_s_all_levels"]
                s["rss_ratio_naive_over_ours"] = naive["peak_rss_mb"] / ours["peak_rss_mb"]
                s["store_size_ratio_ours_over_naive"] = ours["store_mb"] / naive["store_mb"]
                s["speed_target"] = target_speedup(impl, size)
                s["speed_target_met"] = s["speedup_level0"] >= s["speed_target"]
                if ours.get("floor"):
                    s["max_speedup_on_this_machine"] = naive["seconds"] / ours["floor"]["floor_s"]
            if ours.get("floor"):
                s["ours_over_floor"] = ours["seconds"] / ours["floor"]["floor_s"]
            out.append(s)
    return out


def report(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """The printed table of every conversion, the verdict lines and how to read them."""
    headers = [
        "size",
        "impl",
        "levels",
        "seconds",
        "tissue s",
        "L0 MP/s",
        "all-lvl MP/s",
        "peak RSS MB",
        "store MB",
        "max|diff|",
    ]
    body = [
        [
            f"{r['size']}^2",
            r["impl"],
            r["levels"],
            r["seconds"],
            "-" if r.get("tissue_step_s") is None else r["tissue_step_s"],
            r["mp_per_s_level0"],
            r["mp_per_s_all_levels"],
            r["peak_rss_mb"],
            r["store_mb"],
            r["check_max_abs_diff"],
        ]
        for r in rows
    ]
    lines = [table(headers, body), ""]
    for s in summary:
        parts = [f"{s['size']}^2 {s['impl']} (--codec {s['codec']}):"]
        if "speedup_level0" in s:
            ok = "met" if s["speed_target_met"] else "NOT met"
            parts.append(
                f"speed ours/naive = {s['speedup_level0']:.1f}x "
                f"(target >= {s['speed_target']:.0f}x: {ok});"
            )
        if "ours_over_floor" in s:
            parts.append(f"ours / machine floor = {s['ours_over_floor']:.2f}x;")
        if "max_speedup_on_this_machine" in s:
            parts.append(
                f"the floor allows at most {s['max_speedup_on_this_machine']:.1f}x over naive;"
            )
            parts.append(f"store size ours/naive = {s['store_size_ratio_ours_over_naive']:.2f};")
        if "ours_peak_rss_mb" in s:
            ok = "met" if s["rss_target_met"] else "NOT met"
            parts.append(
                f"ours peak RSS {s['ours_peak_rss_mb']:.0f} MB "
                f"(target < {TARGET_RSS_MB:.0f} MB: {ok});"
            )
            parts.append(
                "pixels identical to OpenSlide"
                if s["ours_identical_to_openslide"]
                else f"max |diff| vs OpenSlide {s['ours_max_abs_diff_vs_openslide']:g}"
            )
        lines.append(" ".join(parts))
    lines += [
        "",
        "L0 MP/s = level-0 pixels of the source / conversion seconds (same numerator for both);",
        "all-lvl MP/s = pixels of every level written / seconds (ours: levels down to 512 px;",
        "naive: the source's own levels). Seconds are timed inside each subprocess around the",
        "conversion call; peak RSS covers the whole subprocess (interpreter and imports included).",
        "tissue s = seconds ours waited for the tissue mask and patch tables after the copy,",
        "included in seconds (they are made beside the copy where the mask level can be had",
        "from the source: the side-thread lines below; the JSON rows carry ours' seconds for",
        "every stage of the conversion in stage_seconds).",
        "machine floor (lossless mode; benchmarks/convert/floor.py) = decoding and encoding",
        "every level with the same threads, nothing else, plus writing the store's bytes to",
        "fresh files: the seconds of a converter with no overhead on this machine.",
    ]
    for r in rows:
        st = r.get("stage_seconds") or {}
        if "shards.read" in st:
            lines.append(
                f"{r['size']}^2 {r['impl']}: shard tasks spent {st['shards.read']:.2f} s reading "
                f"and decoding, {st['shards.encode']:.2f} s encoding, {st['shards.write']:.2f} s "
                f"writing (thread-seconds; the stage took {st['shards']:.2f} s of wall time)"
            )
        if "tissue.detect" in st:
            copy = st["shards.read"] + st["shards.encode"] + st["shards.write"]
            side = st["tissue.detect"] + st["tissue.tables"]
            lines.append(
                f"{r['size']}^2 {r['impl']}: tissue beside the copy: detection "
                f"{st['tissue.detect']:.2f} s + mask and tables {st['tissue.tables']:.2f} s = "
                f"{side:.2f} s of the side thread ({side / copy:.2f}x the copy's {copy:.2f} "
                f"thread-s); {st['tissue']:.2f} s waited for after the copy"
            )
        if r.get("floor"):
            f = r["floor"]
            lines.append(
                f"{r['size']}^2 {r['impl']}: floor {f['floor_s']:.2f} s = decode+encode "
                f"{f['decode_encode_s']:.2f} s (decode alone {f['decode_s']:.2f} s) + write "
                f"{f['write_s']:.2f} s ({f['write_mb_per_s']:.0f} MB/s to fresh files)"
            )
    return "\n".join(lines)
