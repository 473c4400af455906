"""The training benchmark's PNG: memory vs image side, seconds per image, loader vs backbone."""

from __future__ import annotations

from pathlib import Path


def plot(
    path: Path, mem: list[dict], speed: list[dict], ld: dict | None, title: str, limit_mb: float
) -> None:
    """Write the benchmark's figure: memory and speed per side (and loader vs backbone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 3 if ld else 2
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8))
    ax = axes[0]
    sides = [r["side"] for r in mem]
    pg = [(r["side"], r["patchgd_step_peak_mb"]) for r in mem if r["patchgd_step_peak_mb"]]
    gd = [(r["side"], r["gd_step_peak_mb"]) for r in mem if r["gd_step_peak_mb"]]
    est = [(r["side"], r["plan_memory_estimate_mb"]) for r in mem if r["plan_memory_estimate_mb"]]
    if pg:
        ax.plot(*zip(*pg, strict=True), "o-", label="PatchGD step (measured)", color="C0")
    if est:
        ax.plot(*zip(*est, strict=True), "x--", label="plan_memory estimate", color="C0", alpha=0.6)
    if gd:
        ax.plot(*zip(*gd, strict=True), "s-", label="GD step (measured)", color="C3")
    nofit = [r["side"] for r in mem if r["gd_fits"] is False]
    if nofit:
        ax.scatter(nofit, [limit_mb] * len(nofit), marker="^", color="C3", zorder=5,
                   label=f"GD does not fit (> {limit_mb / 1e3:g} GB)")  # fmt: skip
        ax.axhline(limit_mb, color="C3", lw=0.8, ls=":", alpha=0.6)
    ax.plot(sides, [r["z_mb"] for r in mem], ":", color="gray", label="Z (B*D*n_h*n_w*4)")
    ax.plot(sides, [r["image_mb"] for r in mem], "-.", color="green", alpha=0.6,
            label="the image itself (uint8)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("peak memory of one training step (MB)")
    ax.set_title("memory: PatchGD vs GD")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    pgs = [(r["side"], r["patchgd_s_per_image"] or r["patchgd_first_step_s"]) for r in speed]
    gds = [(r["side"], r["gd_s_per_image"]) for r in speed if r["gd_s_per_image"]]
    if pgs:
        ax.plot(*zip(*pgs, strict=True), "o-", color="C0",
                label="PatchGD (k=16, zeta=4); one cold step where GD does not fit")  # fmt: skip
    if gds:
        ax.plot(*zip(*gds, strict=True), "s-", color="C3", label="GD (full resolution)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("seconds per image (one step)")
    ax.set_title("speed")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    if ld:
        ax = axes[2]
        lr, br = ld["loader_patches_per_s"], ld["backbone_patches_per_s"]
        labels = ["loader\nrandom k", "loader\nprefetch", "loader\nfill order", "backbone\ngrad",
                  "backbone\nfill"]  # fmt: skip
        vals = [lr["random_k"], lr["random_k_prefetch"], lr["fill_order"], br["grad_k"], br["fill"]]
        ax.bar(labels, vals, color=["C2", "C2", "C2", "C1", "C1"])
        ax.set_yscale("log")
        ax.set_ylabel("patches / s")
        ax.set_title("loader vs backbone (128 px patches)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
