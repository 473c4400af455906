"""Models: torchvision and timm backbones (patch encoders and feature maps), partial
fine-tuning, latent heads, input normalisation and the backbone's normalisation policies."""

from __future__ import annotations

from wsi_patchgd.models.backbones import (
    Backbone,
    FeatureMap,
    build_backbone,
    build_feature_map,
    check_backbone_name,
    list_backbones,
)
from wsi_patchgd.models.freeze import backbone_blocks, freeze_trunk
from wsi_patchgd.models.heads import HEADS, MaskedBatchNorm2d, PaperHead, PooledHead, build_head
from wsi_patchgd.models.inputs import IMAGENET_MEAN, IMAGENET_STD, InputNorm
from wsi_patchgd.models.timm_backbones import is_timm_name

__all__ = [
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FeatureMap",
    "InputNorm",
    "MaskedBatchNorm2d",
    "PaperHead",
    "PooledHead",
    "backbone_blocks",
    "build_backbone",
    "build_feature_map",
    "build_head",
    "check_backbone_name",
    "freeze_trunk",
    "is_timm_name",
    "list_backbones",
]
