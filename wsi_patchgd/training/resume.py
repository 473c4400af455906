"""Checkpoint state of a run, and whether a checkpoint may be resumed with a given config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .setup import Setup

#: config keys a resumed run may change: resources, output, reporting (not the run itself)
RESUME_FREE = ("data.storage_options", "patchgd.fill_batch_size", "patchgd.memory_budget",
               "output.", "device", "deterministic", "precision")  # fmt: skip


def checkpoint_state(
    setup: Setup, opt: Any, sched: Any, epoch: int, rngs: dict[str, Any], best: float
) -> dict[str, Any]:
    """What ``last.pt`` / ``best.pt`` hold: weights, optimizer, schedule, RNGs, redacted config
    and the method's settings in effect."""
    return {
        "model": setup.model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "rng": rngs,
        "best": best,
        "config": setup.cfg.to_saved_dict(),  # credentials redacted
        "k": setup.k,
        "zeta": setup.zeta,
        "epsilon": setup.epsilon,
    }


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as ``{"section.key": value}`` (storage options kept whole)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "storage_options":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(setup: Setup, state: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``state`` (a ``last.pt``) with a config that changes the run.

    Compares the checkpoint's config with the new one on every key that defines the model, the
    data, the PatchGD settings, the optimizer, the schedule and augmentation;
    ``schedule.epochs`` may grow.

    Raises:
        ConfigError: naming the differing keys.
    """
    saved = state.get("config")
    if not isinstance(saved, dict):
        cfg_yaml = path.parent.parent / "config.yaml"
        import yaml

        saved = yaml.safe_load(cfg_yaml.read_text()) if cfg_yaml.is_file() else None
    if not isinstance(saved, dict):
        return  # nothing recorded to compare with (the state dicts are still checked)
    old, new = flatten(saved), flatten(setup.cfg.to_dict())
    diffs = []
    for key, v in new.items():
        if key not in old or key.startswith(RESUME_FREE) or old[key] == v:
            continue
        if key == "schedule.epochs" and isinstance(old[key], int) and v >= old[key]:
            continue
        diffs.append(f"{key} {old[key]!r} -> {v!r}")
    for key, now in setup.method.in_effect(setup).items():
        was = state.get(key)
        if (
            was is not None
            and was != now
            and not any(d.startswith(f"patchgd.{key} ") for d in diffs)
        ):
            diffs.append(f"patchgd.{key} (in effect) {was} -> {now}")
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"{path}: cannot resume with a changed config ({shown}); resume with the run's "
            f"settings ({path.parent.parent / 'config.yaml'}; schedule.epochs may grow) or "
            "train into a new output.dir"
        )


def load_error(exc: BaseException) -> str:
    """The telling line of a ``load_state_dict`` error (its first line only says that it failed),
    at most 200 characters."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return line if len(line) <= 200 else line[:197] + "..."
