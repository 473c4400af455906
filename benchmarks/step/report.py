"""The tables of the step profile: phase, seconds, % of the step, for each backbone."""

from __future__ import annotations

from typing import Any

from benchmarks._common import describe_machine, table
from benchmarks.step.phases import PHASES

#: The share of the step the backbone's forward and backward should take.
BACKBONE_TARGET = 0.90


def phase_table(res: dict[str, Any]) -> str:
    """One backbone's split (the mean instrumented step is 100 %)."""
    total = res["instrumented_step_s"]
    rows: list[list[Any]] = [[p, res["phases_s"][p], 100 * res["phases_s"][p] / total]
                             for p in PHASES]  # fmt: skip
    rows.append(["= step (instrumented)", total, 100.0])
    rows.append(["  backbone compute", res["backbone_compute_s"], 100 * res["backbone_share"]])
    plain = res["plain_step_s"]
    rows.append(["  step, plain (baseline)", plain, 100 * plain / total])
    for k, v in res["background_s"].items():
        rows.append([f"  (overlapped) {k}", v, 100 * v / total])
    return table(["phase", "seconds", "% of step"], rows)


def ops_table(res: dict[str, Any], device: str = "cpu") -> str:
    """Self CPU (or, on CUDA, GPU) time of a plain step's ops by group (torch.profiler)."""
    ops = res["op_groups_s"]
    total = sum(ops.values()) or 1.0
    rows = [[g, v, 100 * v / total] for g, v in sorted(ops.items(), key=lambda kv: -kv[1])]
    what = "self CPU" if device == "cpu" else "self GPU"
    return table([f"op group ({what})", "seconds", "% of ops"], rows)


def channels_last_line(res: dict[str, Any]) -> str:
    """What ``channels_last`` would do to the backbone's time."""
    cl = res["channels_last"]
    return (
        f"channels_last backbone: fill forward x{cl['fill_forward_ratio']:.2f}, grad forward+"
        f"backward x{cl['grad_forward_backward_ratio']:.2f} of the default layout -> would save "
        f"{cl['saves_s']:.2f} s ({100 * cl['saves_share']:+.1f} % of the step)"
    )


def report(doc: dict[str, Any]) -> str:
    """All backbones' tables with the settings and the machine."""
    a = doc["args"]
    out = [
        f"PatchGD step profile: {a['images']} image(s) of {a['size']}^2 px, {a['patch']} px "
        f"patches, k={a['k']}, zeta={a['zeta']}, epsilon={a['epsilon']}, fill batch "
        f"{a['fill_batch_size']}, D={a['latent_dim']}, torch threads {doc['torch_threads']}",
        f"machine: {describe_machine(doc['machine'])}; device cpu, "
        f"{'a GPU is present but unused' if doc.get('cuda_available') else 'no GPU'}"
        if doc.get("device", "cpu") == "cpu"
        else f"machine: {describe_machine(doc['machine'])}; device {doc['device']} "
        f"({doc.get('gpu_name')}), phases timed with a synchronize at every boundary",
    ]
    for res in doc["results"]:
        ok = "meets" if res["backbone_share"] >= BACKBONE_TARGET else "MISSES"
        out += [
            "",
            f"{res['backbone']}: {res['fill_patches']} fill + {res['grad_patches']} grad patches,"
            f" backbone {100 * res['backbone_share']:.1f} % of the step ({ok} the "
            f"{100 * BACKBONE_TARGET:.0f} % goal); instrumentation overhead "
            f"{100 * res['instrumentation_overhead']:+.1f} %",
            phase_table(res),
            "",
            ops_table(res, doc.get("device", "cpu")),
            "",
            channels_last_line(res),
        ]
    return "\n".join(out)
