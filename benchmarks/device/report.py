"""The device benchmark's tables: PatchGD vs GD per side and dtype; loader vs backbone."""

from __future__ import annotations

from typing import Any

from benchmarks._common import describe_machine, describe_torch, table
from benchmarks.train.settings import MB

SWEEP_HEADERS = (
    "side", "dtype", "PatchGD MB", "GD MB", "GD/PatchGD",
    "PatchGD s/step", "GD s/step", "PatchGD patches/s",
)  # fmt: skip
LOADER_HEADERS = ("dtype", "what", "loader patches/s", "backbone patches/s", "loader/backbone")


def _cell(res: dict[str, Any] | None, key: str, scale: float = 1.0) -> Any:
    """A number of one result, or its status (``OOM``, ``skipped``, ``error``, ``-``)."""
    if res is None:
        return "-"
    if res.get("status") != "ok":
        return res.get("status", "-")
    v = res.get(key)
    return "-" if v is None else v / scale


def sweep_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per side and dtype: PatchGD's and GD's peak and step time side by side."""
    by = {(r["method"], r["side"], r["dtype"]): r for r in rows}
    keys = sorted({(r["side"], r["dtype"]) for r in rows}, key=lambda k: (k[0], k[1] != "fp32"))
    out = []
    for side, dtype in keys:
        pg, gd = by.get(("patchgd", side, dtype)), by.get(("gd", side, dtype))
        ratio = "-"
        if pg and gd and pg.get("status") == gd.get("status") == "ok" and pg["peak_bytes"] > 0:
            ratio = f"{gd['peak_bytes'] / pg['peak_bytes']:.1f}x"
        out.append([
            side, dtype, _cell(pg, "peak_bytes", MB), _cell(gd, "peak_bytes", MB), ratio,
            _cell(pg, "step_s"), _cell(gd, "step_s"), _cell(pg, "patches_per_s"),
        ])  # fmt: skip
    return out


def loader_rows(doc: dict[str, Any]) -> list[list[Any]]:
    """Per dtype: random k-batch reads vs forward + backward of k; fill reads vs fill forward."""
    reads = doc["loader"]["loader_patches_per_s"]
    out = []
    for dtype, rates in doc["backbone_patches_per_s"].items():
        r = doc["loader_over_backbone"][dtype]
        out.append([dtype, "k patches, grad", reads["random_k"], rates["grad_k"],
                    f"{r['random_k_vs_grad']:.2f}"])  # fmt: skip
        out.append([dtype, "k patches, prefetched", reads["random_k_prefetch"], rates["grad_k"],
                    f"{r['random_k_prefetch_vs_grad']:.2f}"])  # fmt: skip
        out.append([dtype, "fill batch, no grad", reads["fill_order"], rates["fill"],
                    f"{r['fill_order_vs_fill']:.2f}"])  # fmt: skip
    return out


def growth_lines(growth: list[dict[str, Any]]) -> list[str]:
    """How each method's peak grows: ratio over the sides that fit, and the log-log slope."""
    out = []
    for g in growth:
        name = "PatchGD" if g["method"] == "patchgd" else "GD"
        slope = g["log_log_slope"]
        pixels = g["pixel_ratio_last_over_first"]
        out.append(
            f"{name} {g['dtype']}: peak x{g['peak_ratio_last_over_first']:.2f} from "
            f"{g['sides'][0]} to {g['sides'][-1]} px (pixels x{pixels:.0f})"
            + (
                f", log-log slope {slope:.2f} (0: flat, 2: grows with the pixels)"
                if slope is not None
                else ""
            )
        )
    return out


def report(doc: dict[str, Any]) -> str:
    """The whole report of a (possibly partial) result document."""
    s = doc["settings"]
    out = [
        f"device benchmark: {s['backbone']} (no weights), D={s['latent_dim']}, batch "
        f"{s['batch_size']}, P={s['patch']}, k={s['k']}, zeta={s['zeta']}, "
        f"epsilon={s['epsilon']}, fill batch {s['fill_batch']}, Adam; device {s['device']}",
        f"machine: {describe_machine(doc['machine'])}",
        f"{describe_torch(doc['torch'])}",
    ]
    sweep = doc.get("sweep")
    if sweep:
        out += [
            "",
            f"PatchGD vs GD, first step's peak memory ({sweep['memory_metric']}) and "
            f"seconds per step (mean of {s['repeats']})",
            table(SWEEP_HEADERS, sweep_rows(sweep["rows"])),
        ]
        if not sweep.get("complete"):
            out.append("(the sweep was cut short: these are the configurations it finished)")
        out += growth_lines(sweep["growth"])
        for r in sweep["rows"]:
            if r.get("status") in ("OOM", "error"):
                out.append(
                    f"  {r['method']} {r['side']} {r['dtype']}: {r['status']}: {r['reason']}"
                )
    thr = doc.get("throughput")
    if thr:
        out += [
            "",
            f"Zarr loader vs backbone ({thr['loader']['slide_side']}^2 synthetic slide's store, "
            f"P={s['patch']})",
            table(LOADER_HEADERS, loader_rows(thr)),
        ]
        out.append(
            f"inner loop (reads overlapped with fp32 forward + backward): "
            f"{thr['inner_loop_with_loader_patches_per_s']:,.0f} patches/s"
        )
    for part, why in doc.get("failed_parts", {}).items():
        out.append(f"{part}: FAILED: {why}")
    return "\n".join(out)
