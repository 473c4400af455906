"""The two trainable models: :class:`PatchGDModel` and the GD baseline's :class:`GDModel`.

Both constructors take modules (a backbone and a head, built however you like); the
:func:`build_patchgd_model` and :func:`build_gd_model` functions build them from names (a
torchvision model, a head name), as a run's config gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_patchgd.engine.latent import Cells, write_cells
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.backbones import build_backbone, build_feature_map
from wsi_patchgd.models.heads import PooledHead, build_head
from wsi_patchgd.models.inputs import IMAGENET_MEAN, IMAGENET_STD, InputNorm
from wsi_patchgd.models.norm import batchnorm_to_groupnorm, check_policy

__all__ = [
    "DEFAULT_NORM",
    "GDModel",
    "PatchGDModel",
    "build_gd_model",
    "build_patchgd_model",
]

DEFAULT_NORM = "batch"  #: the policy measured best (DESIGN §2)


class PatchGDModel(nn.Module):
    """Backbone ``f`` + head ``g`` + background embedding + input normalisation.

    Args:
        backbone: Patch encoder ``(N, 3, P, P) float -> (N, D)``.
        head: ``forward(z, mask) -> logits``.
        latent_dim: D; default ``backbone.out_dim``.
        background: ``"zero"`` (fixed zero vector) or ``"learned"`` (a parameter, initialised to 0).
        norm: Normalisation policy of the backbone in every phase: ``"frozen"``, ``"batch"``
            or ``"group"`` (see :mod:`wsi_patchgd.models.norm`; ``"group"`` replaces the
            backbone's BatchNorm layers by GroupNorm here). Inference always runs in eval
            mode.
        mean: Per-channel mean of ``[0, 1]`` inputs (ImageNet by default).
        std: Per-channel standard deviation.

    The normalisation buffers follow the module's dtype and device (``model.double()`` makes the
    whole pipeline float64).
    """

    background: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        latent_dim: int | None = None,
        background: str = "zero",
        norm: str = DEFAULT_NORM,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        dim = latent_dim if latent_dim is not None else getattr(backbone, "out_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError("PatchGDModel needs latent_dim (the backbone's output width)")
        if background not in ("zero", "learned"):
            raise ConfigError(f"background={background!r} is invalid; use 'zero' or 'learned'")
        self.norm = check_policy(norm)
        if self.norm == "group":
            batchnorm_to_groupnorm(backbone)
        self.backbone = backbone
        self.head = head
        self.latent_dim = dim
        self.learned_background = background == "learned"
        self.input_norm = InputNorm(mean, std)
        if self.learned_background:
            self.background = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("background", torch.zeros(dim), persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.input_norm.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's inputs and latent."""
        return self.input_norm.mean.dtype

    def normalize(self, patches: Tensor) -> Tensor:
        """uint8 ``(N, 3, P, P)`` -> float in the model's dtype, ``/255``, mean/std normalised."""
        return self.input_norm(patches)

    def embed(self, patches: Tensor) -> Tensor:
        """``f`` on uint8 patches: ``(N, 3, P, P) -> (N, D)``."""
        return self.backbone(self.normalize(patches))

    def with_background(self, z: Tensor, background: Tensor) -> Tensor:
        """``z`` with the background vector (carrying its gradient) at ``background`` cells."""
        vec = self.background.to(z.dtype).view(1, -1, 1, 1)
        return torch.where(background[:, None], vec, z)

    def forward(
        self,
        z: Tensor,
        mask: Tensor | None = None,
        patches: Tensor | None = None,
        cells: Cells = (),
        background_cells: Tensor | None = None,
    ) -> Tensor:
        """One inner iteration's forward: compose Z, then apply the head.

        Going through ``forward`` (rather than ``embed`` and ``head`` separately) lets
        ``DistributedDataParallel`` wrap the model.

        Args:
            z: Latent ``(B, D, n_h, n_w)``, detached; the fresh features are written into it
                in place (so they persist in the caller's Z).
            mask: Valid cells ``(B, n_h, n_w)``.
            patches: uint8 patches to recompute with gradient (``None``: none).
            cells: ``(b, rows, cols)`` per image, the cells of ``patches`` in order.
            background_cells: ``(B, n_h, n_w)`` cells that get the (learned) background vector
                with its gradient.

        Returns:
            Logits ``(B, C)``.
        """
        if patches is not None:
            z = write_cells(z, cells, self.embed(patches))
        if background_cells is not None and self.learned_background:
            z = self.with_background(z, background_cells)
        return self.head(z, mask)


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of a side or a pair.

    Raises:
        ConfigError: If it is not a positive int or pair.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size={image_size} must be a positive int or (h, w)")
    return (int(size[0]), int(size[1]))


class GDModel(nn.Module):
    """Whole-image model: resize -> backbone feature map -> projection to D -> head.

    Args:
        backbone: Spatial feature extractor ``(N, 3, H, W) float -> (N, C, h, w)`` (e.g.
            :func:`~wsi_patchgd.models.build_feature_map`); kept as ``features``.
        head: ``forward(z, mask) -> logits`` on the projected map (``mask`` is None).
        image_size: Side (or ``(height, width)``) every image is resized to (bilinear,
            antialiased).
        proj: Module from the backbone's C channels to the head's D (``None``: identity).
        norm: The PatchGD run's normalisation policy, for a like-for-like baseline: ``batch``
            is standard BatchNorm (train mode in training, running statistics at evaluation);
            ``frozen`` runs the feature extractor on running statistics in training too, after
            refreshing them from each batch's images (as PatchGD refreshes them from each
            batch's patches); ``group`` replaces the BatchNorm layers by GroupNorm.
        mean: Per-channel mean of ``[0, 1]`` inputs.
        std: Per-channel standard deviation.

    Raises:
        ConfigError: An unknown norm policy or a non-positive size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        image_size: int | tuple[int, int],
        proj: nn.Module | None = None,
        norm: str = "batch",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.norm = check_policy(norm)
        self.image_size = _image_size(image_size)
        self.features = backbone
        if self.norm == "group":
            batchnorm_to_groupnorm(self.features)
        self.proj = proj if proj is not None else nn.Identity()
        self.head = head
        self.input_norm = InputNorm(mean, std)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.input_norm.mean.device

    def prepare(self, images: Sequence[Tensor]) -> Tensor:
        """uint8 ``(3, H, W)`` images of any sizes -> normalised ``(B, 3, *image_size)``."""
        out = []
        for image in images:
            x = image.to(device=self.device, dtype=self.input_norm.mean.dtype)[None]
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )
            out.append(x)
        return self.input_norm(torch.cat(out))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of normalised images ``(B, 3, H, W)``."""
        return self.head(self.proj(self.features(x)), None)


def build_patchgd_model(
    backbone: str,
    num_classes: int,
    head: str = "pooled",
    out_dim: int = 256,
    grid: tuple[int, int] | None = None,
    weights: str | None = None,
    checkpointing: bool = False,
    background: str = "zero",
    norm: str = DEFAULT_NORM,
    head_channels: int = 256,
    n_convs: int = 4,
    dropout: float = 0.2,
    *,
    patch_size: int | None = None,
    trainable: int | str = "all",
) -> PatchGDModel:
    """A :class:`PatchGDModel` from names (see ``build_backbone`` and ``build_head``).

    Args:
        backbone: torchvision model name (see :func:`~wsi_patchgd.models.list_backbones`) or
            ``timm:<name>``.
        num_classes: Number of classes C.
        head: Head name, ``"pooled"`` or ``"paper"``.
        out_dim: Latent width D.
        grid: ``(n_h, n_w)`` of the ``"paper"`` head.
        weights: Backbone weights, as in :func:`~wsi_patchgd.models.build_backbone`.
        checkpointing: Gradient-checkpoint the backbone.
        background: As in :class:`PatchGDModel`.
        norm: As in :class:`PatchGDModel`.
        head_channels: Width of the head's convolutions.
        n_convs: Number of convolutions of the ``"pooled"`` head.
        dropout: Head ``Dropout2d`` probability.
        patch_size: The patch side (timm ViTs are built at it).
        trainable: ``"all"`` or N: only the backbone's last N blocks (and its projection) train.

    Raises:
        ConfigError: For unknown names or invalid values.
    """
    model = PatchGDModel(
        build_backbone(backbone, out_dim, weights, checkpointing, patch_size=patch_size),
        build_head(head, out_dim, num_classes, grid, head_channels, n_convs, dropout),
        out_dim,
        background,
        norm,
    )
    model.backbone.set_trainable(trainable)  # type: ignore[operator]  # after norm swaps
    return model


def build_gd_model(
    backbone: str,
    num_classes: int,
    image_size: int | tuple[int, int],
    out_dim: int = 256,
    weights: str | None = None,
    head_channels: int = 256,
    n_convs: int = 4,
    dropout: float = 0.2,
    norm: str = "batch",
    *,
    trainable: int | str = "all",
) -> GDModel:
    """A :class:`GDModel` from names: the backbone's feature map, a 1x1 convolution to
    ``out_dim`` channels and the same :class:`~wsi_patchgd.models.PooledHead` as PatchGD.

    Args:
        backbone: torchvision model name.
        num_classes: Number of classes C.
        image_size: Side (or ``(height, width)``) every image is resized to.
        out_dim: Width D of the projected feature map (the head's input, as in PatchGD).
        weights: Backbone weights, as in :func:`~wsi_patchgd.models.build_backbone`.
        head_channels: Width of the head's convolutions.
        n_convs: Number of head convolutions.
        dropout: Head ``Dropout2d`` probability.
        norm: As in :class:`GDModel`.
        trainable: ``"all"`` or N: only the feature map's last N blocks (and the projection)
            train, as in :func:`build_patchgd_model`.

    Raises:
        ConfigError: Unknown backbone, bad weights, an unknown norm policy or a non-positive
            size.
    """
    check_policy(norm)
    _image_size(image_size)  # before building anything
    features = build_feature_map(backbone, weights)
    proj = nn.Conv2d(features.channels, out_dim, kernel_size=1)
    head = PooledHead(out_dim, num_classes, head_channels, n_convs, dropout)
    model = GDModel(features, head, image_size, proj, norm)
    features.set_trainable(trainable)  # after the norm policy's layer swaps
    return model
