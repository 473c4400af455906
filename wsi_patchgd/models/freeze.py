"""Partial fine-tuning (``model.trainable``): which blocks of a backbone's trunk train.

``trainable = "all"`` (the default) trains everything. ``trainable = N`` trains only the last N
*blocks* of the trunk, plus whatever the trunk registers after its last block (ViT's final
LayerNorm, EfficientNet's and MobileNetV3's ``conv_head``) and the projection to D (and the
head, and GD's 1x1 projection, which are outside the trunk); everything before (stem, patch and
position embeddings, earlier blocks) gets ``requires_grad = False``. ``N = 0`` is a linear probe
of the frozen trunk. A block is, per family, the children with parameters of the first of:

- ``blocks``: timm ViTs and DeiT (one transformer block each), timm EfficientNet/MobileNet
  (one stage each), torchvision MaxViT;
- ``stages``: timm ConvNeXt, RegNet, and most other timm CNNs;
- ``layers``: timm Swin, torchvision MNASNet;
- ``features``: torchvision MobileNet, EfficientNet, ConvNeXt, DenseNet, VGG, Swin
  (``features.0``, ``features.1``, ...);
- ``encoder.layers``: torchvision ViT (one encoder layer each);
- else, for timm models, the modules that ``feature_info`` names (timm ResNet: ``layer1`` to
  ``layer4``); for torchvision, the top-level children (ResNet: ``conv1``, ``bn1``, ``layer1``
  to ``layer4``).

Frozen parameters are left out of the optimizer (``make_optimizer`` takes the parameters that
require grad) and out of the memory planner's gradient and optimizer-state estimate. Freezing
stops gradients, not BatchNorm statistics: the norm policy (``patchgd.norm``) still decides
how the frozen blocks' BatchNorm layers behave.
"""

from __future__ import annotations

from torch import nn

from wsi_patchgd.errors import ConfigError

__all__ = ["backbone_blocks", "check_trainable", "freeze_trunk"]

_CONTAINERS = ("blocks", "stages", "layers", "features", "encoder.layers")


def check_trainable(trainable: object) -> int | None:
    """``None`` for ``"all"``, else the block count N (an int >= 0).

    Raises:
        ConfigError: naming ``model.trainable`` for any other value.
    """
    if trainable == "all":
        return None
    if isinstance(trainable, int) and not isinstance(trainable, bool) and trainable >= 0:
        return trainable
    raise ConfigError(
        f"config key 'model.trainable' = {trainable!r} is invalid; use all or an integer >= 0 "
        "(train only the last N blocks of the backbone, plus its projection)"
    )


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def backbone_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a trunk (see the module docstring), in order, as ``(qualified name, module)``.

    Only blocks with parameters count.
    """
    for path in _CONTAINERS:
        try:
            container = trunk.get_submodule(path)
        except AttributeError:
            continue
        blocks = [(f"{path}.{n}", m) for n, m in container.named_children() if _has_params(m)]
        if len(blocks) >= 2:
            return blocks
    info = getattr(trunk, "feature_info", None)
    names: list[str] = []
    if info is not None:
        try:
            names = [str(d["module"]) for d in info if d.get("module")]
        except (TypeError, KeyError):
            names = []
    blocks = []
    for name in names:
        try:
            module = trunk.get_submodule(name)
        except AttributeError:
            continue
        if _has_params(module):
            blocks.append((name, module))
    if len(blocks) >= 2:
        return blocks
    return [(n, m) for n, m in trunk.named_children() if _has_params(m)]


def freeze_trunk(trunk: nn.Module, trainable: int | str, name: str = "backbone") -> list[str]:
    """Freeze all but the last ``trainable`` blocks of ``trunk`` (and what follows them).

    Args:
        trunk: The feature extractor (a ``Backbone``'s ``features``, a GD feature map's model).
        trainable: ``"all"`` (nothing frozen; ``requires_grad`` left as it is) or N >= 0.
        name: The backbone's name, for messages.

    Returns:
        The qualified names of the trainable blocks (all blocks for ``"all"``).

    Raises:
        ConfigError: An invalid value, or N larger than the number of blocks.
    """
    n = check_trainable(trainable)
    blocks = backbone_blocks(trunk)
    if n is None:
        return [b for b, _ in blocks]
    if n > len(blocks):
        raise ConfigError(
            f"config key 'model.trainable' = {n}, but {name} has {len(blocks)} blocks "
            f"({blocks[0][0]} ... {blocks[-1][0]}); use 0..{len(blocks)} or all"
        )
    kept = blocks[len(blocks) - n :]
    last_block_params = {id(p) for p in blocks[-1][1].parameters()}
    after_last = False
    for p in trunk.parameters():  # registration order: the neck follows the last block
        if id(p) in last_block_params:
            after_last = True
            p.requires_grad_(n > 0)
        else:
            p.requires_grad_(after_last and n > 0)  # 0: a linear probe, the neck frozen too
    for _, module in kept:
        module.requires_grad_(True)
    return [b for b, _ in kept]
