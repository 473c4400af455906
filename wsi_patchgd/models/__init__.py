"""Models: torchvision backbones (patch encoders and feature maps) and latent heads."""

from __future__ import annotations

from wsi_patchgd.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    FeatureMap,
    build_backbone,
    build_feature_map,
    list_backbones,
)
from wsi_patchgd.models.heads import HEADS, MaskedBatchNorm2d, PaperHead, PooledHead, build_head

__all__ = [
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FeatureMap",
    "MaskedBatchNorm2d",
    "PaperHead",
    "PooledHead",
    "build_backbone",
    "build_feature_map",
    "build_head",
    "list_backbones",
]
