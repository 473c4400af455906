"""The latent ``Z``: its layout for a batch of images, and the one place features are written
into it (:func:`write_cells`, used by the fill and by every inner iteration).

``Z (B, D, n_h_max, n_w_max)`` holds one D-vector per patch cell; images of different grid sizes
share a batch padded to the largest grid, and ``valid`` marks the cells inside each image's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from wsi_patchgd.sampling import PatchGrid

__all__ = ["Cells", "Latent", "latent_masks", "write_cells"]

#: ``(b, rows, cols)`` per image: the grid cells of some patches of image ``b`` of the batch
Cells = Sequence[tuple[int, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Latent:
    """A filled latent and its masks.

    Attributes:
        z: ``(B, D, n_h_max, n_w_max)``.
        valid: ``(B, n_h_max, n_w_max)`` bool, cells inside each image's grid.
        background: ``(B, n_h_max, n_w_max)`` bool, valid cells that are not tissue.
        grids: The images' grids.
        patches: Patches run through the backbone to fill ``z``.
    """

    z: Tensor
    valid: Tensor
    background: Tensor
    grids: tuple[PatchGrid, ...]
    patches: int = 0


def latent_masks(grids: Sequence[PatchGrid], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(valid, background)`` masks ``(B, n_h_max, n_w_max)`` of a batch of grids."""
    n_h, n_w = max(g.n_h for g in grids), max(g.n_w for g in grids)
    valid = torch.zeros(len(grids), n_h, n_w, dtype=torch.bool)
    tissue = torch.zeros_like(valid)
    for b, g in enumerate(grids):
        valid[b, : g.n_h, : g.n_w] = True
        tissue[b, : g.n_h, : g.n_w] = torch.from_numpy(np.array(g.tissue))
    return valid.to(device), (valid & ~tissue).to(device)


def write_cells(z: Tensor, cells: Cells, feats: Tensor) -> Tensor:
    """Write ``feats (m, D)`` into ``z`` at the cells ``(b, rows, cols)``, in order (in place).

    Returns:
        ``z`` (the same tensor; autograd records the write when ``feats`` carries gradient).
    """
    b = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r, _ in cells])
    rows = torch.cat([torch.as_tensor(r, dtype=torch.long) for _, r, _ in cells])
    cols = torch.cat([torch.as_tensor(c, dtype=torch.long) for _, _, c in cells])
    z[b.to(z.device), :, rows.to(z.device), cols.to(z.device)] = feats.to(z.dtype)
    return z
