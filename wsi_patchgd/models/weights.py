"""Backbone weights from a file: recognising a weights path, reading a state dict of tensors,
and loading it into a module with clear errors for keys that do not fit.

(torchvision weights names such as ``"IMAGENET1K_V1"`` are resolved by
:mod:`wsi_patchgd.models.backbones`.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError

__all__ = ["is_weights_file", "load_into", "load_state_file"]


def is_weights_file(weights: str) -> bool:
    """Whether ``weights`` names a file (an existing path, a weights suffix or a separator)
    rather than a torchvision weights name."""
    path = Path(weights).expanduser()
    return (
        path.exists()
        or path.suffix in {".pt", ".pth", ".bin", ".ckpt", ".tar"}
        or "/" in weights
        or "\\" in weights
    )


def load_state_file(path: str) -> dict[str, Tensor]:
    """The state dict in ``path`` (unwrapped from ``state_dict``/``model``, ``module.`` removed).

    Raises:
        ConfigError: If the file is missing or does not hold a state dict of tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"weights file {path!r} not found; give an existing path or None")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"weights file {path!r} cannot be read as a state dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(
    module: nn.Module, state: dict[str, Tensor], ignore: tuple[str, ...], src: str
) -> None:
    """Load ``state`` into ``module``; missing or mis-shaped keys are errors, extra keys warn.

    Args:
        module: Where to load.
        state: The state dict.
        ignore: Prefixes of extra keys that are expected (removed layers), not warned about.
        src: The file's name, for messages.

    Raises:
        ConfigError: If keys of ``module`` are missing from ``state`` or have another shape.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own and not k.startswith(ignore)]
    if missing or shapes:
        raise ConfigError(
            f"weights file {src!r} does not fit this model: {len(missing)} missing keys "
            f"{missing[:4]}, {len(shapes)} with another shape {shapes[:4]}; check the "
            "backbone name (and out_dim for a saved backbone)"
        )
    if extra:
        warnings.warn(
            f"weights file {src!r}: ignored {len(extra)} unexpected keys {extra[:4]}",
            stacklevel=3,
        )
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
