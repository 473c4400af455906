"""Training engines: Patch Gradient Descent and the standard gradient-descent baseline."""

from __future__ import annotations

from wsi_patchgd.engine.gd import GDModel, GDStepResult, gd_predict, gd_train_batch, load_image
from wsi_patchgd.engine.patchgd import (
    Latent,
    LossFn,
    PatchGDModel,
    PatchGDTrainer,
    PatchSource,
    StepResult,
    TensorPatchSource,
    backbone_modes,
    build_patchgd_model,
    maybe_autocast,
    predict,
    train_batch,
)

__all__ = [
    "GDModel",
    "GDStepResult",
    "Latent",
    "LossFn",
    "PatchGDModel",
    "PatchGDTrainer",
    "PatchSource",
    "StepResult",
    "TensorPatchSource",
    "backbone_modes",
    "build_patchgd_model",
    "gd_predict",
    "gd_train_batch",
    "load_image",
    "maybe_autocast",
    "predict",
    "train_batch",
]
