"""Filling the latent ``Z`` from every tissue patch of a batch of images (paper: Algorithm 2).

:func:`fill_latent` is the first phase of a PatchGD training batch and the whole of inference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from wsi_patchgd.engine.latent import Latent, latent_masks, write_cells
from wsi_patchgd.engine.model import PatchGDModel
from wsi_patchgd.engine.source import PatchSource, announce, read_patches
from wsi_patchgd.engine.step import maybe_autocast, unwrap
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.models.norm import phase_mode

__all__ = ["fill_latent"]


def fill_latent(
    model: nn.Module,
    source: PatchSource,
    images: Sequence[int],
    batch_size: int,
    grad: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> Latent:
    """Fill Z: run the backbone over every tissue patch and write each feature at its cell.

    Tissue patches run through the backbone in storage order, ``batch_size`` at a time across
    images; background cells are never run and hold the background vector; cells outside an
    image's grid are zero and masked out. Without ``grad`` this runs under ``torch.no_grad()``
    with the backbone in the mode its ``norm`` policy gives the phase (eval mode unless the model
    is training under the ``batch`` or ``group`` policy).

    Args:
        model: The :class:`PatchGDModel` (or a DDP-style wrapper of one).
        source: Where patches are read.
        images: Image ids of the batch.
        batch_size: Patches per backbone call.
        grad: Build Z with autograd through every patch, backbone mode unchanged (the
            full-image gradient; memory grows with the image — tests and small images).
        autocast_dtype: Optional autocast dtype (e.g. ``torch.bfloat16``).

    Returns:
        The :class:`Latent`: ``z (B, D, n_h_max, n_w_max)``, its masks, the grids and the
        number of patches run.

    Raises:
        ConfigError: If ``batch_size`` is below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"fill batch_size={batch_size} must be >= 1")
    net = unwrap(model, PatchGDModel)
    grids = tuple(source.grid(i) for i in images)
    valid, background = latent_masks(grids, net.device)
    n_h, n_w = valid.shape[1:]
    z = torch.zeros(len(grids), net.latent_dim, n_h, n_w, dtype=net.dtype, device=net.device)
    count = 0
    with (
        nullcontext() if grad else torch.no_grad(),
        nullcontext() if grad else phase_mode(net.backbone, net.norm, net.training),
        maybe_autocast(net.device, autocast_dtype),
    ):
        z = net.with_background(z, background)
        order = getattr(source, "storage_order", None)
        indices = [
            order(images[b], g.tissue_indices()) if order else g.tissue_indices()
            for b, g in enumerate(grids)
        ]
        chunks = list(_chunks(indices, batch_size))
        announce(source, [(images[b], idx) for chunk in chunks for b, idx in chunk])
        for chunk in chunks:
            patches = read_patches(source, [(images[b], idx) for b, idx in chunk])
            cells = [(b, *grids[b].coords(idx)) for b, idx in chunk]
            z = write_cells(z, cells, net.embed(patches))
            count += patches.shape[0]
    return Latent(z, valid, background, grids, count)


def _chunks(
    indices: Sequence[np.ndarray], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """The given patches of all images (storage order), ``batch_size`` at a time."""
    chunk: list[tuple[int, np.ndarray]] = []
    size = 0
    for b, idx in enumerate(indices):
        pos = 0
        while pos < idx.size:
            take = min(batch_size - size, idx.size - pos)
            chunk.append((b, idx[pos : pos + take]))
            size, pos = size + take, pos + take
            if size == batch_size:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk
