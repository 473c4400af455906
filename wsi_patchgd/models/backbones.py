"""Backbones: any torchvision classification model or timm model, its classifier removed.

:func:`build_backbone` gives the patch encoder ``f`` of PatchGD: ``(N, 3, P, P)`` float images
to ``(N, out_dim)`` vectors (the model's pooled features, then a linear projection).
:func:`build_feature_map` gives the same model's *spatial* feature map ``(N, C, h, w)`` (the
input of its global pooling), used by the standard gradient-descent baseline.

Weights: ``None`` (random init, the default: nothing is downloaded), a local file (a
torchvision-format state dict of the whole classification model, or the state dict of one of
our :class:`Backbone` modules), or a torchvision weights name such as ``"IMAGENET1K_V1"`` or
``"DEFAULT"``, which torchvision downloads (needs internet); files are read by
:mod:`wsi_patchgd.models.weights`.

Names starting with ``timm:`` (or ``hf-hub:``) are timm models, built by
:mod:`wsi_patchgd.models.timm_backbones` (ViTs at the patch size; their LayerNorm has no
train/eval difference, so the norm policy has nothing to reconcile for them).
``trainable`` (config ``model.trainable``) freezes all but the last N blocks
(:mod:`wsi_patchgd.models.freeze`).
"""

from __future__ import annotations

import difflib
import warnings
from collections import OrderedDict
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.checkpointing import CheckpointedSequential, enable_checkpointing
from wsi_patchgd.models.freeze import check_trainable, freeze_trunk
from wsi_patchgd.models.timm_backbones import (
    build_timm_model,
    check_timm_name,
    enable_timm_checkpointing,
    is_timm_name,
    timm_feature_map,
)
from wsi_patchgd.models.weights import is_weights_file, load_into, load_state_file

__all__ = [
    "Backbone",
    "CheckpointedSequential",
    "FeatureMap",
    "build_backbone",
    "build_feature_map",
    "check_backbone_name",
    "list_backbones",
]

_PROBE_SIZES = (64, 224)
_NO_AUX = ("googlenet", "inception_v3")


def list_backbones() -> list[str]:
    """Names of the torchvision classification models :func:`build_backbone` accepts."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _first_tensor(out: Any) -> Tensor:
    """The main output of a model that may return a namedtuple (GoogLeNet, Inception)."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"backbone returned {type(out).__name__}, expected a tensor")


def _pooled(h: Tensor) -> Tensor:
    if h.ndim == 4:
        return h.mean(dim=(2, 3))
    if h.ndim != 2:
        raise ValueError(f"backbone features have shape {tuple(h.shape)}, expected (N, C)")
    return h


def check_backbone_name(name: str) -> None:
    """Check that ``name`` is a torchvision classification model or a timm model
    (``timm:<name>``), without building it.

    Raises:
        ConfigError: For another name, naming ``model.backbone``, with the closest valid names.
    """
    if is_timm_name(name):
        check_timm_name(name)
        return
    names = list_backbones()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(names[:5])}"
        raise ConfigError(
            f"config key 'model.backbone' = {name!r} is not a torchvision classification model;"
            f" {hint} (see wsi_patchgd.models.list_backbones(); timm models: timm:<name>)"
        )


def _torchvision_model(name: str, weights: str | None) -> nn.Module:
    """The classification model, with torchvision weights when ``weights`` names an enum."""
    check_backbone_name(name)
    kwargs: dict[str, Any] = {"aux_logits": False} if name in _NO_AUX else {}
    if weights is not None and not is_weights_file(weights):
        enum = torchvision.models.get_model_weights(name)
        try:
            chosen = enum[weights.removeprefix(enum.__name__ + ".")]
        except KeyError:
            valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
            raise ConfigError(
                f"weights={weights!r} is neither a file nor a torchvision weights name of "
                f"{name}; use a path or one of: {valid}"
            ) from None
        kwargs["weights"] = chosen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet/Inception init notice
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(name, **kwargs)


# parameter-free pooling and normalisation inside a classifier block stay (ConvNeXt's
# LayerNorm2d + Flatten, SqueezeNet's and MaxViT's pooling); every other child goes
_KEEP_IN_CLASSIFIER = (nn.LayerNorm, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _remove_classifier(model: nn.Module) -> tuple[str, ...]:
    """Remove the whole classification block of a torchvision model; return what was removed.

    The backbone is a feature extractor (DESIGN §2): no classifier layer and no dropout may be
    left in it, since dropout inside the backbone would act on the fresh patches of an inner
    iteration and on nothing else. Removed, per family:

    - ``classifier`` (MobileNet V2/V3, EfficientNet, VGG, AlexNet, DenseNet, SqueezeNet, MNASNet,
      ConvNeXt, MaxViT): the whole block except its parameter-free pooling, flatten and
      LayerNorm children (ConvNeXt's ``LayerNorm2d``), so MobileNetV2's ``Dropout(0.2)`` and
      MobileNetV3's ``Linear -> Hardswish -> Dropout`` go with the last Linear;
    - ``fc`` and ``dropout`` (ResNet, ResNeXt, Wide ResNet, RegNet, ShuffleNet, GoogLeNet,
      Inception), ``heads`` (ViT), ``head`` (Swin);
    - otherwise the last ``nn.Linear`` / ``nn.Conv2d`` registered in the model;

    then every remaining dropout module (``nn.Dropout*``) is replaced by ``nn.Identity``.

    Returns:
        The qualified names of the removed modules (prefixes of state-dict keys to ignore).
    """
    removed: list[str] = []
    block = getattr(model, "classifier", None)
    if isinstance(block, nn.Sequential):
        kept: OrderedDict[str, nn.Module] = OrderedDict(
            (n, c) for n, c in block.named_children() if isinstance(c, _KEEP_IN_CLASSIFIER)
        )
        model.classifier = nn.Sequential(kept) if kept else nn.Identity()
        removed += [f"classifier.{n}" for n, _ in block.named_children() if n not in kept]
    elif isinstance(block, nn.Module):
        model.classifier = nn.Identity()
        removed.append("classifier")
    for attr in ("fc", "heads", "head", "dropout"):
        if block is None and isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            removed.append(attr)
    if not removed:
        last = None
        for qualified, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                last = qualified
        if not last:
            raise ConfigError(f"cannot find the classifier of {type(model).__name__}")
        parent_name, _, attr = last.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, nn.Identity())
        removed.append(last)
    for qualified, module in list(model.named_modules()):
        if isinstance(module, nn.modules.dropout._DropoutNd) and qualified:
            parent_name, _, attr = qualified.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, nn.Identity())
    return tuple(removed)


@torch.no_grad()
def _probe(module: nn.Module, fn: Any, sizes: tuple[int, ...] = _PROBE_SIZES) -> Any:
    """Run ``fn(module, x)`` on a dummy batch in eval mode, trying each size (64 then 224 px)."""
    was_training = module.training
    module.eval()
    error: Exception | None = None
    try:
        for size in sizes:
            try:
                return fn(module, torch.zeros(1, 3, size, size))
            except Exception as exc:  # models with a minimum or fixed input size
                error = exc
        raise ConfigError(f"cannot run {type(module).__name__} on a dummy image: {error}")
    finally:
        module.train(was_training)


def _classifier_free(
    name: str, weights: str | None, patch_size: int | None = None
) -> tuple[nn.Module, tuple[str, ...]]:
    """The torchvision or timm model without its classifier, with weights loaded."""
    if is_timm_name(name):
        return build_timm_model(name, weights, patch_size)
    model = _torchvision_model(name, weights)
    removed = _remove_classifier(model)
    if weights is not None and is_weights_file(weights):
        state = load_state_file(weights)
        if any(k.startswith("features.") for k in state) and "proj.weight" in state:
            state = {k.removeprefix("features."): v for k, v in state.items()}
        load_into(model, state, ignore=(*(r + "." for r in removed), "proj."), src=weights)
    return model, removed


class Backbone(nn.Module):
    """Patch encoder: a torchvision or timm trunk (classifier removed), pooled, then ``Linear``
    to D.

    Attributes:
        name: Backbone name (torchvision, or ``timm:<name>``).
        features: The model with its classifier removed (torchvision: replaced by
            ``nn.Identity``; timm: ``num_classes=0``, pooled features out).
        proj: ``Linear(feature_dim, out_dim)``.
        feature_dim: Width of the pooled features.
        out_dim: Output width D.
    """

    def __init__(self, name: str, features: nn.Module, feature_dim: int, out_dim: int) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.feature_dim = feature_dim
        self.out_dim = out_dim
        self.proj = nn.Linear(feature_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Encode patches.

        Args:
            x: Normalised float patches, ``(N, 3, P, P)``.

        Returns:
            ``(N, out_dim)`` features.
        """
        return self.proj(_pooled(_first_tensor(self.features(x))))

    def set_trainable(self, trainable: int | str) -> list[str]:
        """Train only the last N blocks of ``features`` (and the projection); see
        :func:`~wsi_patchgd.models.freeze.freeze_trunk`. Returns the trainable blocks."""
        return freeze_trunk(self.features, trainable, self.name)


def build_backbone(
    name: str,
    out_dim: int = 256,
    weights: str | None = None,
    checkpointing: bool = False,
    *,
    patch_size: int | None = None,
    trainable: int | str = "all",
) -> Backbone:
    """Build a patch encoder from any torchvision classification model or timm model.

    Args:
        name: torchvision model name, e.g. ``"resnet50"``, ``"mobilenet_v2"``; or a timm model,
            ``"timm:resnet10t"``, ``"timm:vit_small_patch16_224"``, ``"timm:hf-hub:<org>/<m>"``
            (see :mod:`~wsi_patchgd.models.timm_backbones`).
        out_dim: Output width D of the projection.
        weights: ``None`` (random init), a local state-dict file (torchvision or timm format,
            or a saved :class:`Backbone`), a torchvision weights name (``"DEFAULT"``,
            ``"IMAGENET1K_V1"``; downloaded by torchvision), or for timm ``"pretrained"``.
        checkpointing: Gradient-checkpoint the feature extractor: timm models through their
            ``set_grad_checkpointing`` (where a model lacks it, as for torchvision:) every
            top-most ``nn.Sequential`` (ResNet stages, ``features`` of MobileNet/EfficientNet/
            DenseNet/ConvNeXt, the ViT encoder layers) becomes a :class:`CheckpointedSequential`,
            so activations are kept only between its children and recomputed in backward.
        patch_size: The patch side P. timm ViTs are built at it (``img_size=P``); torchvision
            models and timm CNNs take any size and ignore it.
        trainable: ``"all"`` or N: only the last N blocks (and the projection) train
            (:mod:`~wsi_patchgd.models.freeze`).

    Returns:
        The :class:`Backbone`, ``(N, 3, P, P) -> (N, out_dim)``. Transformers with a fixed input
        size (torchvision ViT) only accept patches of that size.

    Raises:
        ConfigError: Unknown model name (with close names), missing or unfitting weights file,
            unknown weights name, ``out_dim < 1``, or a bad ``trainable``.
    """
    if out_dim < 1:
        raise ConfigError(f"out_dim={out_dim} must be >= 1")
    check_trainable(trainable)
    features, _ = _classifier_free(name, weights, patch_size)
    sizes = (patch_size, *_PROBE_SIZES) if patch_size else _PROBE_SIZES
    feature_dim = int(_probe(features, lambda m, x: _pooled(_first_tensor(m(x))), sizes).shape[1])
    backbone = Backbone(name, features, feature_dim, out_dim)
    if weights is not None and is_weights_file(weights):
        state = load_state_file(weights)
        if "proj.weight" in state:
            load_into(
                backbone.proj,
                {k[5:]: v for k, v in state.items() if k.startswith("proj.")},
                (),
                weights,
            )
    if checkpointing and not (is_timm_name(name) and enable_timm_checkpointing(features)):
        enable_checkpointing(backbone.features)
    backbone.set_trainable(trainable)
    return backbone


class FeatureMap(nn.Module):
    """The spatial feature map of a torchvision or timm model: ``(N, 3, H, W) -> (N, C, h, w)``.

    Attributes:
        name: Backbone name.
        node: The traced graph node whose output is returned (the input of global pooling;
            for timm models ``"forward_features"``).
        channels: ``C``.
    """

    def __init__(self, name: str, trunk: nn.Module, node: str, channels: int) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.node = node
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """Spatial features ``(N, C, h, w)`` of normalised images ``(N, 3, H, W)``."""
        out = self.trunk(x)
        return out if isinstance(out, Tensor) else out["map"]

    def set_trainable(self, trainable: int | str) -> list[str]:
        """Train only the last N blocks of the trunk (see :meth:`Backbone.set_trainable`)."""
        inner = self.trunk.model if is_timm_name(self.name) else self.trunk
        return freeze_trunk(inner, trainable, self.name)  # type: ignore[arg-type]


def build_feature_map(
    name: str, weights: str | None = None, *, trainable: int | str = "all"
) -> FeatureMap:
    """The feature extractor of a torchvision or timm model, stopped before its global pooling.

    torchvision: the node is found by tracing the model
    (``torchvision.models.feature_extraction``) and taking the last node whose output is 4-D with
    both spatial sizes above 1 on a dummy image: e.g. ``layer4`` of ResNet, ``features`` of
    MobileNet, the ReLU after DenseNet's ``features``. For torchvision's ViT (no spatial map)
    that is the patch embedding, which is not useful: use a timm ViT. timm: the model's
    ``forward_features`` (CNNs), or for ViTs their patch tokens laid out on the patch grid
    (:class:`~wsi_patchgd.models.timm_backbones.TimmTokenMap`; the ViT is built with
    ``dynamic_img_size``, so it takes the GD image size).

    Args:
        name: torchvision model name or ``timm:<name>``.
        weights: As in :func:`build_backbone`.
        trainable: As in :func:`build_backbone`.

    Returns:
        The :class:`FeatureMap`.

    Raises:
        ConfigError: As in :func:`build_backbone`, or if no spatial node is found.
    """
    check_trainable(trainable)
    if is_timm_name(name):
        model, _ = _classifier_free(name, weights)
        trunk, channels = timm_feature_map(name, model)
        fmap = FeatureMap(name, trunk, "forward_features", channels)
        fmap.set_trainable(trainable)
        return fmap
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    model, _ = _classifier_free(name, weights)
    _, nodes = get_graph_node_names(model)
    probe = create_feature_extractor(model, return_nodes=nodes)
    outputs: dict[str, Any] = _probe(probe, lambda m, x: m(x))
    chosen = None
    for node, value in outputs.items():
        if isinstance(value, Tensor) and value.ndim == 4 and min(value.shape[2:]) > 1:
            chosen = (node, int(value.shape[1]))
    if chosen is None:
        raise ConfigError(f"backbone {name!r} has no spatial feature map; use a CNN")
    trunk = create_feature_extractor(model, return_nodes={chosen[0]: "map"})
    fmap = FeatureMap(name, trunk, chosen[0], chosen[1])
    fmap.set_trainable(trainable)
    return fmap
