"""The ``model`` section of a run config (re-exported by :mod:`.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ModelConfig", "validate_model_config"]


@dataclass
class ModelConfig:
    #: a torchvision classification model (resnet50, mobilenet_v2, ...) or a timm model:
    #: timm:<name> (timm:resnet10t, timm:vit_small_patch16_224; ViTs are built at the patch
    #: size), timm:hf-hub:<org>/<model> (needs network)
    backbone: str = "mobilenet_v2"
    #: None (random), a local file, a torchvision enum name, or pretrained (timm, downloaded)
    weights: str | None = None
    num_classes: int = 2
    latent_dim: int = 256
    head: str = "pooled"  #: pooled (any grid) | paper (fixed grid)
    head_channels: int = 256
    head_convs: int = 4
    dropout: float = 0.2
    background: str = "zero"  #: zero | learned
    checkpointing: bool = False
    #: BatchNorm momentum of the whole model (None: the architecture's; MobileNetV3 and
    #: EfficientNet use 0.01, which lags far behind the weights in a short run)
    norm_momentum: float | None = None
    #: all | N: train only the backbone's last N blocks (ViT blocks, CNN stages; see
    #: wsi_patchgd.models.freeze) plus its projection and the head; 0: a linear probe
    trainable: int | str = "all"
    #: the classes are ordered grades (PANDA's ISUP 0-5): predict adds the expected grade
    ordinal: bool = False


def validate_model_config(m: ModelConfig) -> None:
    """Checks of the ``model`` section that need no model (names are checked when built).

    Raises:
        ConfigError: naming the key.
    """
    if m.trainable != "all" and (
        isinstance(m.trainable, str) or isinstance(m.trainable, bool) or m.trainable < 0
    ):
        raise ConfigError(
            f"config key 'model.trainable' = {m.trainable!r} is invalid; use all or an integer"
            " >= 0 (train only the last N blocks of the backbone, plus its projection)"
        )
    if m.backbone.startswith("timm:") and not m.backbone.removeprefix("timm:"):
        raise ConfigError("config key 'model.backbone' = 'timm:' needs a model name (timm:<name>)")
