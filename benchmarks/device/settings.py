"""The device benchmark's name, defaults and the ``--quick`` (CPU smoke run) sizes.

The model is the training benchmark's (``benchmarks/train/settings.py``: ``mobilenet_v2``
without weights, latent D = 256, batch size 1, Adam, 2 classes), so the figures compare.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAME = "bench_device"
DEFAULT_SIZES = "512,1024,2048,4096,8192"
QUICK_SIZES = "128,256,512"
DTYPES = ("fp32", "bf16")

#: option -> (default, --quick default); an option left at None takes one of these
DEFAULTS: dict[str, tuple[object, object]] = {
    "dtypes": ("fp32,bf16", "fp32"),
    "patch": (128, 32),
    "k": (16, 8),
    "zeta": (4, 2),
    "epsilon": (4, 2),
    "fill_batch": (64, 32),
    "repeats": (3, 1),
    "slide_size": (4096, 2048),
    "loader_batches": (40, 5),
    "backbone_iters": (10, 2),
}


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left at None with their default (or ``--quick`` default); parse dtypes."""
    for key, (full, quick) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    dtypes = [d for d in str(args.dtypes).replace(" ", "").split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if not dtypes or bad:
        raise SystemExit(f"--dtypes {args.dtypes!r}: give a comma-separated subset of fp32,bf16")
    args.dtypes = dtypes
    parts = [p for p in str(args.parts).replace(" ", "").split(",") if p]
    if not parts or set(parts) - {"sweep", "loader"}:
        raise SystemExit(f"--parts {args.parts!r}: give sweep, loader or sweep,loader")
    args.parts = parts
    return args


def parse_sides(text: str) -> list[int]:
    """``"512,1024"`` -> [512, 1024] (ascending; each side at least 64 px)."""
    try:
        sides = sorted({int(s) for s in text.replace(" ", "").split(",") if s})
    except ValueError:
        sides = []
    if not sides or sides[0] < 64:
        raise SystemExit(f"--sizes {text!r}: give comma-separated image sides >= 64")
    return sides


def torch_dtype(name: str) -> torch.dtype | None:
    """``"fp32"`` -> None (no autocast), ``"bf16"`` -> ``torch.bfloat16`` (autocast)."""
    import torch

    return None if name == "fp32" else torch.bfloat16
