"""The training benchmark's tables and JSON summaries: memory, its growth, speed, loader.

Each ``*_table`` function returns the printed table and the rows that go into the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import table
from benchmarks.train.settings import BACKBONE, BATCH, LATENT_DIM, LOADER_TARGET, MB


def _mb(b: float | None) -> Any:
    """Bytes as MB for a table cell; ``-`` for None."""
    return "-" if b is None else b / MB


def memory_table(rows: list[dict[str, Any]], sizes: list[int]) -> tuple[str, list[dict]]:
    """Part 1: PatchGD's step peak (and ``plan_memory``'s estimate) vs GD's, per image side."""
    by = {(r["method"], r["side"]): r for r in rows}
    out_rows, summary = [], []
    for s in sizes:
        pg, gd = by.get(("patchgd", s)), by.get(("gd", s))
        if pg is None:
            continue
        pg_peak = pg.get("step_peak_bytes") if pg.get("fits") else None
        est = pg.get("plan", {}).get("estimate")
        pg_total = None if pg_peak is None else pg_peak + pg.get("param_bytes", 0)
        if gd is None:
            gd_txt, ratio = "not run", "-"
        elif gd.get("fits"):
            gd_txt = gd["step_peak_bytes"] / MB
            ratio = f"{gd['step_peak_bytes'] / pg_peak:.1f}x" if pg_peak else "-"
        else:
            gd_txt, ratio = "does not fit", "-"
        z = pg["z_bytes"]
        out_rows.append(
            [
                s,
                f"{pg['n_h']}x{pg['n_w']}",
                pg["image_bytes"] / MB,
                z / MB,
                _mb(pg_peak),
                _mb(None if pg_peak is None else pg_peak - z),
                _mb(pg_total),
                _mb(est),
                f"{pg_total / est:.2f}" if pg_total and est else "-",
                gd_txt,
                ratio,
            ]
        )
        summary.append(
            {
                "side": s,
                "cells": pg["n_h"] * pg["n_w"],
                "image_mb": pg["image_bytes"] / MB,
                "z_mb": z / MB,
                "patchgd_step_peak_mb": None if pg_peak is None else pg_peak / MB,
                "patchgd_peak_minus_z_mb": None if pg_peak is None else (pg_peak - z) / MB,
                "patchgd_step_plus_params_mb": None if pg_total is None else pg_total / MB,
                "plan_memory_estimate_mb": None if est is None else est / MB,
                "measured_over_estimate": (pg_total / est) if pg_total and est else None,
                "gd_fits": None if gd is None else bool(gd.get("fits")),
                "gd_step_peak_mb": gd["step_peak_bytes"] / MB if gd and gd.get("fits") else None,
                "gd_reason": None if gd is None or gd.get("fits") else gd.get("reason"),
                "gd_over_patchgd": (gd["step_peak_bytes"] / pg_peak)
                if gd and gd.get("fits") and pg_peak
                else None,
            }
        )
    headers = [
        "side",
        "grid",
        "image MB",
        "Z MB",
        "PatchGD step MB",
        "peak-Z MB",
        "+params MB",
        "plan_memory MB",
        "meas/plan",
        "GD step MB",
        "GD/PatchGD",
    ]
    return table(headers, out_rows), summary


def growth_lines(summary: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """PatchGD's memory growth per added grid cell vs Z's 1 KB per cell (and GD's)."""
    lines: list[str] = []
    doc: dict[str, Any] = {}
    pg = [r for r in summary if r["patchgd_step_peak_mb"] is not None]
    if len(pg) >= 2:
        a, b = pg[0], pg[-1]
        d_cells = b["cells"] - a["cells"]
        d_mem = (b["patchgd_step_peak_mb"] - a["patchgd_step_peak_mb"]) * MB
        d_z = (b["z_mb"] - a["z_mb"]) * MB
        d_pix = (b["side"] ** 2 - a["side"] ** 2) * 3
        doc["patchgd"] = {
            "from_side": a["side"],
            "to_side": b["side"],
            "pixels_factor": (b["side"] / a["side"]) ** 2,
            "peak_growth_mb": d_mem / MB,
            "z_growth_mb": d_z / MB,
            "bytes_per_cell": d_mem / d_cells,
            "z_bytes_per_cell": LATENT_DIM * 4 * BATCH,
            "growth_over_z_growth": d_mem / d_z if d_z else None,
            "growth_over_image_growth": d_mem / d_pix,
        }
        head = (
            f"PatchGD {a['side']} -> {b['side']} ({doc['patchgd']['pixels_factor']:.0f}x the "
            f"pixels): step peak {a['patchgd_step_peak_mb']:.0f} -> "
            f"{b['patchgd_step_peak_mb']:.0f} MB ({d_mem / MB:+.1f} MB) while Z grew by "
            f"{d_z / MB:.2f} MB"
        )
        if abs(d_mem) < 10 * MB:
            lines.append(head + ": flat within the measurement's resolution.")
        else:
            lines.append(
                head + f": {d_mem / d_cells / 1e3:.1f} KB per added {LATENT_DIM}-D cell (Z itself: "
                f"{LATENT_DIM * 4 * BATCH / 1e3:.1f} KB/cell; the rest is Z's clone and the "
                f"head's activations over Z), i.e. {d_mem / d_pix:.2f} bytes per added image byte."
            )
    gd = [r for r in summary if r["gd_step_peak_mb"] is not None]
    if len(gd) >= 2:
        a, b = gd[-2], gd[-1]
        d_mem = (b["gd_step_peak_mb"] - a["gd_step_peak_mb"]) * MB
        d_cells = b["cells"] - a["cells"]
        doc["gd"] = {
            "from_side": a["side"],
            "to_side": b["side"],
            "bytes_per_cell": d_mem / d_cells,
            "growth_over_image_growth": d_mem / ((b["side"] ** 2 - a["side"] ** 2) * 3),
        }
        lines.append(
            f"GD {a['side']} -> {b['side']}: +{d_mem / MB:,.0f} MB, "
            f"{d_mem / d_cells / MB:.2f} MB per {LATENT_DIM}-D cell's worth of pixels "
            f"({doc['gd']['growth_over_image_growth']:.0f} bytes per added image byte)."
        )
    return lines, doc


def speed_table(
    rows: list[dict[str, Any]], mem_rows: list[dict[str, Any]], sizes: list[int]
) -> tuple[str, list[dict]]:
    """Part 2: seconds per image of PatchGD vs GD (one cold PatchGD step where GD does not fit)."""
    by = {(r["method"], r["side"]): r for r in rows}
    mem = {(r["method"], r["side"]): r for r in mem_rows}
    out_rows, summary = [], []
    for s in sizes:
        pg, gd = by.get(("patchgd", s)), by.get(("gd", s)) or mem.get(("gd", s))
        if pg is None or not pg.get("fits"):
            continue
        pg_rep = pg.get("repeat_s") or []
        gd_rep = (gd or {}).get("repeat_s") or []
        pg_s = float(np.mean(pg_rep)) if pg_rep else None
        gd_s = float(np.mean(gd_rep)) if gd_rep else None
        ratio = pg_s / gd_s if pg_s and gd_s else None
        out_rows.append(
            [
                s,
                f"{pg_s:.2f}" if pg_s else "-",
                f"{pg['first_step_s']:.2f}",
                f"{gd_s:.2f}" if gd_s else ("does not fit" if gd else "not run"),
                f"{ratio:.2f}" if ratio else "-",
                len(pg_rep),
            ]
        )
        summary.append(
            {
                "side": s,
                "patchgd_s_per_image": pg_s,
                "patchgd_first_step_s": pg["first_step_s"],
                "gd_s_per_image": gd_s,
                "gd_first_step_s": (gd or {}).get("first_step_s"),
                "patchgd_over_gd": ratio,
                "repeats": len(pg_rep),
                "patchgd_repeat_s": pg_rep,
                "gd_repeat_s": gd_rep,
            }
        )
    headers = ["side", "PatchGD s/img", "PatchGD 1st step s", "GD s/img", "PatchGD/GD", "reps"]
    return table(headers, out_rows), summary


def loader_table(ld: dict[str, Any], k: int, fill: int) -> str:
    """Part 3: loader vs backbone patches/s, with pass/fail against :data:`LOADER_TARGET`."""
    lr, br = ld["loader_patches_per_s"], ld["backbone_patches_per_s"]
    r = ld["ratios"]
    rows = [
        [f"random k={k} (plain)", lr["random_k"], f"grad fwd+bwd k={k}", br["grad_k"],
         f"{r['random_k_vs_grad']:.1f}x", "PASS" if ld["pass_grad"] else "FAIL"],
        [f"random k={k} (prefetch 20)", lr["random_k_prefetch"], f"grad fwd+bwd k={k}",
         br["grad_k"], f"{r['random_k_prefetch_vs_grad']:.1f}x", ""],
        [f"storage order, {fill}/read", lr["fill_order"], f"no-grad fill batch {fill}",
         br["fill"], f"{r['fill_order_vs_fill']:.1f}x", "PASS" if ld["pass_fill"] else "FAIL"],
    ]  # fmt: skip
    return table(
        [
            "loader",
            "patches/s",
            "backbone",
            "patches/s",
            "loader/backbone",
            f">= {LOADER_TARGET:g}x",
        ],
        rows,
    )


def print_report(
    args: argparse.Namespace,
    doc: dict[str, Any],
    mem_text: str,
    growth: list[str],
    speed_text: str,
    json_path: Path,
    png_path: Path,
) -> None:
    """Print the three parts' tables and verdicts, the machine and where the files went."""
    speed_summary, loader, info = doc["speed"], doc["loader"], doc["machine"]
    machine = doc["machine_text"]
    print()
    print(f"== 1. peak memory of one training step ({doc['settings']['memory_metric']}), batch 1,")
    print(
        f"      {BACKBONE}, D={LATENT_DIM}, P={args.patch}, k={args.k}, zeta=eps={args.zeta}, "
        f"fill batch {args.fill_batch}; GD limit {args.mem_limit_gb:g} GB; MB = 10^6 bytes"
    )
    print(mem_text)
    print(
        "  image MB: the uint8 image (held by the data source, not part of the step). "
        "+params: step peak + parameter bytes, comparable to plan_memory (which counts "
        "weights+grads+Adam, Z/head and max(k patches, fill batch))."
    )
    for line in growth:
        print("  " + line)
    print()
    print(f"== 2. seconds per image (mean of {args.repeats} steps after a warm-up step)")
    print(speed_text)
    ratios = [r["patchgd_over_gd"] for r in speed_summary if r["patchgd_over_gd"]]
    if ratios:
        print(
            f"  PatchGD / GD time ratio: {', '.join(f'{x:.2f}' for x in ratios)} "
            "(< 1: PatchGD faster; the paper reports PatchGD 'almost at par' with GD)"
        )
    if loader:
        print()
        print(
            f"== 3. loader vs backbone ({loader['store']}, level 0, {args.patch} px patches; "
            f"backbone on {args.device})"
        )
        print(loader_table(loader, args.k, args.fill_batch))
        t = loader["tissue"]
        if not t["stored_table_matches_mask"]:
            print(
                f"  NOTE: the store's level-0 patch table lists {t['stored_table_tissue_patches']}"
                f" tissue patches of {t['grid'][0]}x{t['grid'][1]}, the stored mask gives "
                f"{t['recomputed_tissue_patches']} (mask tissue fraction "
                f"{t['mask_tissue_fraction']:.2f}); patches here are sampled from the mask."
            )
        print(
            f"  inner loop with the loader (prefetch) overlapped: "
            f"{loader['inner_loop_with_loader_patches_per_s']:,.1f} patches/s, "
            f"{loader['ratios']['inner_loop_slowdown_vs_backbone_alone']:.2f}x the time of the "
            "backbone alone"
        )
        ok = loader["pass_grad"] and loader["pass_fill"]
        print(
            f"  requirement loader >= {LOADER_TARGET:g}x backbone: {'PASS' if ok else 'FAIL'} "
            f"(training k-batches {'PASS' if loader['pass_grad'] else 'FAIL'}, "
            f"filling Z {'PASS' if loader['pass_fill'] else 'FAIL'})"
        )
    print()
    la0, la1 = info["loadavg_at_start"][0], info["loadavg_at_end"][0]
    print(f"machine: {machine}; load average at end {la1:.1f} (start {la0:.1f})")
    print(f"JSON: {json_path}")
    print(f"PNG:  {png_path}")
