"""timm backbones: any ``timm`` model (CNN or vision transformer) as a PatchGD patch encoder.

A backbone name ``timm:<name>`` (``timm:resnet10t``, ``timm:vit_small_patch16_224``,
``timm:convnext_tiny.fb_in22k``) builds ``timm.create_model(<name>, num_classes=0)``: the
classifier is removed by timm and the model returns its pooled (pre-logits) features, which
:class:`~wsi_patchgd.models.backbones.Backbone` projects to D as for torchvision models.
``timm:hf-hub:<org>/<model>``, ``hf-hub:<org>/<model>`` and ``timm:local-dir:<folder>`` are
passed to timm unchanged (hf-hub names need network access, even for random weights, since timm
reads the model's config from the Hub).

Vision transformers are built at the run's patch size (``img_size=patch_size``, so timm resizes
the position embeddings the way it does for any other input size) and with
``dynamic_img_size=True`` where the model accepts it, so the same model also runs on other sizes
(the GD baseline's whole images). ViTs normalise with LayerNorm, which has no running statistics
and behaves the same in train and eval mode: the PatchGD norm policy (``patchgd.norm``) has no
train/eval mismatch to correct for them (``frozen`` and ``batch`` are then the same, apart from
stochastic depth, which is off by default); for timm CNNs it applies to their BatchNorm layers as
for torchvision.

Weights: ``None`` (random init, the default; nothing is downloaded), a local state-dict file (of
the timm model, with or without its classifier, or of a saved ``Backbone``), or ``"pretrained"``
(``"DEFAULT"`` too): timm's pretrained weights, downloaded from the Hub (needs network).
``timm`` is imported only when a timm backbone is built.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

import torch
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.weights import is_weights_file, load_into, load_state_file

__all__ = [
    "TIMM_PREFIX",
    "TimmTokenMap",
    "build_timm_model",
    "check_timm_name",
    "enable_timm_checkpointing",
    "is_timm_name",
    "timm_feature_map",
    "timm_name",
]

TIMM_PREFIX = "timm:"
_SOURCES = ("hf-hub:", "local-dir:")  #: timm model sources passed through unchanged
_PRETRAINED = ("pretrained", "DEFAULT")


def is_timm_name(name: str) -> bool:
    """Whether the backbone ``name`` is a timm model (``timm:...`` or ``hf-hub:...``)."""
    return name.startswith((TIMM_PREFIX, "hf-hub:"))


def timm_name(name: str) -> str:
    """The name timm gets: ``name`` without its ``timm:`` prefix."""
    return name.removeprefix(TIMM_PREFIX)


def check_timm_name(name: str) -> None:
    """Check that ``name`` (``timm:...``) names a timm model, without building it.

    ``hf-hub:`` and ``local-dir:`` names are not checked here (timm resolves them).

    Raises:
        ConfigError: naming ``model.backbone``, with the closest timm names.
    """
    import timm

    bare = timm_name(name)
    if bare.startswith(_SOURCES):
        return
    if not bare or not timm.is_model(bare):
        names = timm.list_models()
        close = difflib.get_close_matches(bare.split(".")[0], names, n=5, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
            if close
            else "see timm.list_models()"
        )
        raise ConfigError(f"config key 'model.backbone' = {name!r} is not a timm model; {hint}")


def _create(bare: str, patch_size: int | None, pretrained: bool) -> nn.Module:
    """``timm.create_model`` without classifier, at ``patch_size`` for models that take one."""
    import timm

    sized: dict[str, Any] = {} if patch_size is None else {"img_size": patch_size}
    attempts = [{**sized, "dynamic_img_size": True}, *([sized] if sized else []), {}]
    error: Exception | None = None
    for extra in attempts:
        try:
            return timm.create_model(bare, pretrained=pretrained, num_classes=0, **extra)
        except TypeError as exc:  # a model without img_size / dynamic_img_size arguments
            error = exc
            if not any(key in str(exc) for key in extra):
                break
        except (OSError, RuntimeError, ValueError) as exc:
            where = "the Hugging Face Hub" if bare.startswith("hf-hub:") or pretrained else "timm"
            raise ConfigError(
                f"config key 'model.backbone' = {TIMM_PREFIX + bare!r}: timm could not build it"
                f" ({type(exc).__name__}: {str(exc)[:200]}); models and weights from {where} "
                "need network access, or give a local weights file in model.weights"
            ) from exc
    raise ConfigError(f"config key 'model.backbone': cannot build {bare!r}: {error}")


def _no_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (modules kept: timm's attention reads ``.p``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0


def _filtered(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` through the model module's ``checkpoint_filter_fn`` (timm's own adaptation of
    a checkpoint to a model: ViT position embeddings resized to this ``img_size``, ...)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        out = fn(dict(state), model)
    except Exception:  # a filter for another checkpoint layout: load the keys as they are
        return state
    return out if isinstance(out, dict) else state


def build_timm_model(
    name: str, weights: str | None = None, patch_size: int | None = None
) -> tuple[nn.Module, tuple[str, ...]]:
    """A timm model without classifier (pooled features out), with its weights.

    Args:
        name: ``timm:<name>``, ``timm:hf-hub:<org>/<model>``, ``hf-hub:<org>/<model>``.
        weights: ``None``, a local state-dict file, or ``"pretrained"``/``"DEFAULT"``.
        patch_size: The input size for models that take an ``img_size`` (ViTs); ``None``: the
            model's default.

    Returns:
        The model (every dropout probability 0: regularisation lives in the head) and the
        state-dict prefixes of its removed classifier (keys to ignore in a weights file).

    Raises:
        ConfigError: Unknown name, a model timm cannot build here, unknown weights name, or a
            weights file that does not fit.
    """
    check_timm_name(name)
    pretrained = weights in _PRETRAINED
    if weights is not None and not pretrained and not is_weights_file(weights):
        raise ConfigError(
            f"config key 'model.weights' = {weights!r} for {name}: use a local state-dict file, "
            "'pretrained' (timm's weights, downloaded) or null (random init)"
        )
    model = _create(timm_name(name), patch_size, pretrained)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "fc")
    removed = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    if weights is not None and not pretrained:
        state = load_state_file(weights)
        if "proj.weight" in state and any(k.startswith("features.") for k in state):
            state = {k[9:]: v for k, v in state.items() if k.startswith("features.")}
        state = _filtered(model, state)
        load_into(model, state, ignore=(*(r + "." for r in removed), "proj."), src=weights)
    _no_dropout(model)
    return model, removed


def enable_timm_checkpointing(model: nn.Module) -> bool:
    """timm's own gradient checkpointing (``set_grad_checkpointing``); False if unsupported."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        return False
    try:
        setter(True)
    except (AssertionError, NotImplementedError, TypeError):
        return False
    return True


def _forward_features(model: Any, x: Tensor) -> Tensor:
    """timm's ``forward_features``: the features before global pooling."""
    out: Tensor = model.forward_features(x)
    return out


class TimmTokenMap(nn.Module):
    """A ViT's patch tokens as a spatial map: ``(N, 3, H, W) -> (N, C, H / s, W / s)``.

    ``forward_features`` tokens after the final norm, prefix tokens (class, register tokens)
    dropped, laid out on the patch-embedding grid (``s``: the ViT's patch stride).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))

    def forward(self, x: Tensor) -> Tensor:
        """Token map ``(N, C, h, w)`` of normalised images ``(N, 3, H, W)``."""
        tokens = _forward_features(self.model, x)
        embed: Any = self.model.patch_embed
        h, w = embed.dynamic_feat_size(x.shape[-2:])
        tokens = tokens[:, self.prefix :]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class _NHWC(nn.Module):
    """``forward_features`` of a model whose output format is channels-last, as NCHW."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return _forward_features(self.model, x).permute(0, 3, 1, 2)


class _Features(nn.Module):
    """``forward_features`` of a timm CNN (already ``(N, C, h, w)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return _forward_features(self.model, x)


@torch.no_grad()
def timm_feature_map(name: str, model: nn.Module, probe: int = 64) -> tuple[nn.Module, int]:
    """The spatial feature map of a timm model, for the GD baseline.

    CNNs: ``forward_features`` (the input of their global pooling; channels-last outputs such as
    Swin's are permuted). ViTs (a token sequence with a ``patch_embed`` grid): the patch tokens
    laid out on their grid (:class:`TimmTokenMap`), so GD's projection and head see one
    D-vector per ViT patch, as PatchGD's head sees one per PatchGD patch.

    Returns:
        The ``(N, 3, H, W) -> (N, C, h, w)`` module and ``C``.

    Raises:
        ConfigError: If the output is neither a spatial map nor a ViT token sequence.
    """
    was = model.training
    model.eval()
    try:
        out = _forward_features(model, torch.zeros(1, 3, probe, probe))
    except Exception as exc:
        raise ConfigError(f"cannot run {name} on a {probe} px dummy image: {exc}") from exc
    finally:
        model.train(was)
    if isinstance(out, Tensor) and out.ndim == 4:
        nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
        return (_NHWC(model), int(out.shape[3])) if nhwc else (_Features(model), int(out.shape[1]))
    embed = getattr(model, "patch_embed", None)
    if isinstance(out, Tensor) and out.ndim == 3 and hasattr(embed, "dynamic_feat_size"):
        return TimmTokenMap(model), int(out.shape[2])
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    raise ConfigError(
        f"config key 'model.backbone' = {name!r}: its features {shape} are neither a spatial map "
        "nor ViT patch tokens, so the GD baseline cannot use it; use patchgd.method=patchgd"
    )
