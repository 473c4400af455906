"""Heads ``g``: the latent grid ``Z (B, D, n_h, n_w)`` to class logits ``(B, C)``.

Both heads take ``mask`` (``(B, n_h, n_w)`` bool, ``True`` on cells inside the image's grid),
so that images of different grid sizes can share a batch padded to a common grid.

- :class:`PooledHead` (default): the paper's latent convolutions kept at full resolution
  (stride 1) and ended by *masked* global average pooling, so it accepts any grid, and an image
  gives the same logits alone or in a padded batch (in eval mode).
- :class:`PaperHead`: the reference implementation's head (one stride-1 and three stride-2
  convolutions, flatten, linear), tied to one grid size; for reproducing the paper's numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wsi_patchgd.errors import ConfigError

__all__ = ["HEADS", "MaskedBatchNorm2d", "PaperHead", "PooledHead", "build_head"]

HEADS = ("pooled", "paper")


def _check_input(z: Tensor, mask: Tensor | None) -> None:
    if z.ndim != 4:
        raise ValueError(f"head input Z must be (B, D, n_h, n_w), got shape {tuple(z.shape)}")
    if mask is not None and (mask.shape != (z.shape[0], *z.shape[2:]) or mask.dtype != torch.bool):
        raise ValueError(
            f"head mask must be bool of shape {(z.shape[0], *z.shape[2:])}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_moments(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance per channel over the valid cells of every process, and the
    cell count (differentiable: the all-reduce passes gradients back to every process)."""
    from torch.distributed.nn.functional import all_reduce

    c = x.shape[1]
    local = torch.cat(
        [
            valid.sum().reshape(1),
            (x * valid).sum(dim=(0, 2, 3)),
            (x.square() * valid).sum(dim=(0, 2, 3)),
        ]
    )
    total = all_reduce(local)
    count = total[0]
    mean = total[1 : 1 + c] / count
    var = (total[1 + c :] / count - mean.square()).clamp(min=0)
    return mean, var, count


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics count only the valid (unpadded) cells.

    In eval mode, or without a mask, it is exactly ``nn.BatchNorm2d``. In training with a mask,
    the batch mean and (biased) variance are taken over the valid cells only, and the running
    statistics are updated from them (unbiased variance), as ``nn.BatchNorm2d`` would on the
    valid cells alone. State-dict keys are those of ``nn.BatchNorm2d``.

    In a ``torch.distributed`` job (torchrun) the training statistics are those of the global
    batch: the cell counts, sums and sums of squares of every process are all-reduced (with
    their gradient, as ``SyncBatchNorm`` does, on CPU too). Every process calls the head once per
    inner iteration, so the collectives line up.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Normalise ``x (B, C, H, W)``; ``mask (B, H, W)`` marks the cells that count."""
        if not self.training:
            return super().forward(x)
        synced = _world_size() > 1
        if mask is None and not synced:
            return super().forward(x)
        valid = (
            mask[:, None].to(x.dtype)
            if mask is not None
            else x.new_ones(x.shape[0], 1, *x.shape[2:])
        )
        if synced:
            mean, var, count = _global_moments(x, valid)
        else:
            count = valid.sum()
            mean = (x * valid).sum(dim=(0, 2, 3)) / count
            var = ((x - mean[None, :, None, None]).square() * valid).sum(dim=(0, 2, 3)) / count
        centred = x - mean[None, :, None, None]
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_var is not None
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


class _ConvBlock(nn.Module):
    """Conv 3x3 -> ReLU -> BatchNorm2d -> Dropout2d (the paper's block order)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)
        self.act = nn.ReLU()
        self.norm = MaskedBatchNorm2d(out_ch)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Apply the block; ``mask`` only matters for the batch statistics (stride 1)."""
        return self.drop(self.norm(self.act(self.conv(x)), mask))


class PooledHead(nn.Module):
    """Latent convolutions at full grid resolution, masked global average pooling, linear.

    Padded cells (``mask`` False) are set to zero before every convolution, so the valid cells
    next to them see exactly the zero padding they would see at the border of the image alone;
    BatchNorm statistics in training count valid cells only (:class:`MaskedBatchNorm2d`); the
    final average runs over valid cells. Hence an image gives the same logits alone as in a
    padded batch in eval mode (and the same gradients, up to batch statistics, in training).

    Args:
        in_dim: Latent width D.
        num_classes: Number of classes C.
        channels: Width of the convolutions.
        n_convs: Number of 3x3 stride-1 convolutions (the paper uses 4).
        dropout: ``Dropout2d`` probability after each block.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        channels: int = 256,
        n_convs: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if min(in_dim, num_classes, channels, n_convs) < 1:
            raise ConfigError(
                f"PooledHead needs positive sizes, got in_dim={in_dim}, "
                f"num_classes={num_classes}, channels={channels}, n_convs={n_convs}"
            )
        widths = [in_dim] + [channels] * n_convs
        self.blocks = nn.ModuleList(
            _ConvBlock(widths[i], widths[i + 1], 1, dropout) for i in range(n_convs)
        )
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, C)`` from ``z (B, D, n_h, n_w)`` and ``mask (B, n_h, n_w)``."""
        _check_input(z, mask)
        if mask is not None and bool(mask.all()):
            mask = None
        weight = None if mask is None else mask[:, None].to(z.dtype)
        h = z
        for block in self.blocks:
            h = block(h if weight is None else h * weight, mask)
        if weight is None:
            pooled = h.mean(dim=(2, 3))
        else:
            pooled = (h * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp(min=1)
        return self.fc(pooled)


def _strided_size(n: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


class PaperHead(nn.Module):
    """The reference implementation's head, tied to one grid size.

    One 3x3 stride-1 convolution, then three 3x3 stride-2 convolutions (padding 1), each
    followed by ReLU -> BatchNorm2d -> Dropout2d, then flatten and linear.

    Args:
        in_dim: Latent width D.
        num_classes: Number of classes C.
        grid: ``(n_h, n_w)`` the head is built for.
        channels: Width of the convolutions.
        dropout: ``Dropout2d`` probability.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        grid: tuple[int, int],
        channels: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        grid = (int(grid[0]), int(grid[1]))
        if min(in_dim, num_classes, channels, *grid) < 1:
            raise ConfigError(
                f"PaperHead needs positive sizes, got in_dim={in_dim}, "
                f"num_classes={num_classes}, channels={channels}, grid={grid}"
            )
        self.grid = grid
        self.blocks = nn.ModuleList(
            [_ConvBlock(in_dim, channels, 1, dropout)]
            + [_ConvBlock(channels, channels, 2, dropout) for _ in range(3)]
        )
        out_h, out_w = grid
        for _ in range(3):
            out_h, out_w = _strided_size(out_h), _strided_size(out_w)
        self.fc = nn.Linear(channels * out_h * out_w, num_classes)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, C)``; ``z`` must have the grid the head was built for, unpadded.

        Raises:
            ConfigError: If the grid differs or some cells are padding.
        """
        _check_input(z, mask)
        if tuple(z.shape[2:]) != self.grid:
            raise ConfigError(
                f"head 'paper' was built for grid {self.grid} but got a {tuple(z.shape[2:])} "
                "grid; use head 'pooled' for images of varying size or rebuild with that grid"
            )
        if mask is not None and not bool(mask.all()):
            raise ConfigError(
                "head 'paper' cannot ignore padded cells; give all images the same grid or "
                "use head 'pooled'"
            )
        h = z
        for block in self.blocks:
            h = block(h)
        return self.fc(h.flatten(1))


def build_head(
    name: str,
    in_dim: int,
    num_classes: int,
    grid: tuple[int, int] | None = None,
    channels: int = 256,
    n_convs: int = 4,
    dropout: float = 0.2,
) -> nn.Module:
    """Head by name.

    Args:
        name: ``"pooled"`` (any grid) or ``"paper"`` (fixed grid).
        in_dim: Latent width D.
        num_classes: Number of classes C.
        grid: ``(n_h, n_w)``; required by ``"paper"``, ignored by ``"pooled"``.
        channels: Width of the convolutions.
        n_convs: Number of convolutions of ``"pooled"``.
        dropout: ``Dropout2d`` probability.

    Returns:
        The head module, ``forward(z, mask) -> logits``.

    Raises:
        ConfigError: Unknown name, or ``"paper"`` without ``grid``.
    """
    if name == "pooled":
        return PooledHead(in_dim, num_classes, channels, n_convs, dropout)
    if name == "paper":
        if grid is None:
            raise ConfigError("head 'paper' needs grid=(n_h, n_w); or use head 'pooled'")
        return PaperHead(in_dim, num_classes, grid, channels, dropout)
    raise ConfigError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
