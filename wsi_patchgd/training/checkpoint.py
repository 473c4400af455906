"""Checkpoints: written atomically (temporary file + rename), so a kill never leaves half a file.

Loading never runs code from the file: ``torch.load(weights_only=True)`` accepts tensors and plain
data only (dicts, lists, numbers, strings), which is all a checkpoint of this project holds. A file
with any other Python object (a crafted pickle whose ``__reduce__`` would run a command) is refused
with :class:`~wsi_patchgd.errors.ConfigError` before anything in it is executed.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
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
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights-only loading refused it: nothing ran
        raise ConfigError(f"{p}: refused to load: {_why(exc)}") from exc
    except Exception as exc:
        raise ConfigError(f"{p}: not a readable checkpoint ({_one_line(exc)})") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{p}: not a wsi_patchgd checkpoint (holds a {type(state).__name__})")
    return state


def _one_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _why(exc: BaseException) -> str:
    """One line from torch's weights-only error: the refused object, or what was wrong."""
    lines = [x.strip() for x in str(exc).splitlines()]
    for line in lines:
        m = re.search(r"GLOBAL ([\w.]+)", line)
        if m:
            return (
                f"it holds the Python object {m.group(1)}, and loading it could run code "
                "(a checkpoint written by wsi_patchgd holds only tensors and plain data)"
            )
    detail = next((x.rstrip(".") for x in lines if x.startswith("Unsupported")), "")
    return (
        "not a file of tensors and plain data written by torch.save"
        + (f" ({detail})" if detail else "")
        + "; it was not loaded"
    )
