"""Checkpoints: written atomically (temporary file + rename), so a kill never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, p)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]
    except Exception as exc:
        raise ConfigError(f"{p}: not a readable checkpoint ({exc})") from exc
