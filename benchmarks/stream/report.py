"""The result table and the targets (cold >= 50 %, warm >= 90 % of local patches/s)."""

from __future__ import annotations

from typing import Any

from benchmarks._common import table

COLD_TARGET = 0.5
WARM_TARGET = 0.9


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """Per backend: the worst cold and warm ratio over the workloads, and whether they pass."""
    out: dict[str, Any] = {}
    for backend in {r["backend"] for r in doc["rows"] if r["backend"] != "-"}:
        rows = [r for r in doc["rows"] if r["backend"] == backend]
        cold = min(r["ratio"] for r in rows if r["mode"] == "cold cache")
        warm = min(r["ratio"] for r in rows if r["mode"] == "warm cache")
        nocache = min(r["ratio"] for r in rows if r["mode"] == "no cache")
        out[backend] = {
            "worst_no_cache_ratio": nocache, "worst_cold_ratio": cold, "worst_warm_ratio": warm,
            "cold_met": cold >= COLD_TARGET, "warm_met": warm >= WARM_TARGET,
        }  # fmt: skip
    return out


def report(doc: dict[str, Any]) -> str:
    """The table of every row, then the server's ceiling and the target lines."""
    head = ["workload", "mode", "backend", "patches/s", "of local", "CPU ms/patch",
            "requests", "MB fetched", "cache hits"]  # fmt: skip
    rows = [
        [r["workload"], r["mode"], r["backend"], r["patches_per_s"], f"{r['ratio']:.0%}",
         r["cpu_ms_per_patch"], r["requests"] if r["mode"] != "local" else "-",
         r["mb_fetched"] if r["mode"] != "local" else "-",
         r["cache_hits"] if r["mode"] != "local" else "-"]
        for r in doc["rows"]
    ]  # fmt: skip
    c = doc["server_ceiling"]
    lines = [
        table(head, rows),
        "",
        f"server ceiling (moto + proxy, whole level-0 shards, 16 at a time, plain s3fs): "
        f"{c['mb_per_s']:,.0f} MB/s = {c['patches_per_s']:,.0f} tissue patches/s",
    ]
    for backend, t in sorted(doc["targets"].items()):
        lines.append(
            f"{backend}: worst cold {t['worst_cold_ratio']:.0%} (target {COLD_TARGET:.0%}: "
            f"{'met' if t['cold_met'] else 'NOT met'}), worst warm {t['worst_warm_ratio']:.0%} "
            f"(target {WARM_TARGET:.0%}: {'met' if t['warm_met'] else 'NOT met'}), worst "
            f"without cache {t['worst_no_cache_ratio']:.0%}"
        )
    return "\n".join(lines)
