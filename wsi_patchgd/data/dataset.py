"""A torch ``Dataset`` of slides — (index, slide id, label, patch grid) — and its patch source.

PatchGD does not batch pixels: a batch is a list of slides, and the engine reads their patches
through a patch source as it needs them. So the dataset yields slides, not tensors; it works
with ``DataLoader`` (give it ``collate_fn=SlideDataset.collate``) and with any sampler,
``DistributedSampler`` included; :attr:`SlideDataset.patch_source` reads the patches, with
image ids equal to dataset indices::

    ds = SlideDataset.from_manifest("manifest.csv", num_classes=6, folds=[0, 1, 2])
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=SlideDataset.collate)
    for batch in loader:
        train_batch(model, opt, ds.patch_source, batch.index.tolist(), batch.label, ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..io import StorageOptions
from ..sampling import PatchGrid
from .loader import StorePatchSource
from .manifest import ManifestRow, read_manifest


@dataclass(frozen=True)
class SlideItem:
    """One slide of a :class:`SlideDataset`.

    Attributes:
        index: position in the dataset (= image id in its patch source).
        slide_id, label: from the manifest.
        grid: the slide's patch grid at the training level (tissue mask, fractions).
    """

    index: int
    slide_id: str
    label: int
    grid: PatchGrid


@dataclass(frozen=True)
class SlideBatch:
    """A batch of slides as :meth:`SlideDataset.collate` makes it (for ``DataLoader``)."""

    index: torch.Tensor  #: (n,) int64 image ids
    label: torch.Tensor  #: (n,) int64
    slide_id: list[str]
    grid: list[PatchGrid]

    def __len__(self) -> int:
        return len(self.slide_id)


class SlideDataset(Dataset[SlideItem]):
    """The slides of some manifest rows, their labels and patch grids.

    Args:
        rows: manifest rows (see :func:`~wsi_patchgd.data.manifest.read_manifest`).
        level: pyramid level to train on, or one per row.
        patch_size: patch side (default: the stores' chunk size, the fast path).
        tissue_threshold: a patch is tissue when its stored tissue fraction is >= this.
        storage_options: fsspec options for remote stores.

    Raises:
        ConfigError: no rows.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        *,
        level: int | Sequence[int] = 0,
        patch_size: int | None = None,
        tissue_threshold: float = 0.1,
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.rows = list(rows)
        if not self.rows:
            raise ConfigError("SlideDataset: no slides (empty manifest or no slide in the folds)")
        self.patch_source = StorePatchSource(
            [r.store for r in self.rows], level, patch_size, tissue_threshold, storage_options
        )

    @classmethod
    def from_manifest(
        cls,
        manifest: str,
        num_classes: int | None = None,
        *,
        folds: Sequence[int] | None = None,
        storage_options: StorageOptions | None = None,
        **kwargs: object,
    ) -> SlideDataset:
        """The slides of a manifest CSV (path or URL), optionally only those of some folds.

        Raises:
            ConfigError: unreadable manifest, a bad row or store, no slide in ``folds``.
        """
        rows = read_manifest(manifest, num_classes, storage_options=storage_options)
        if folds is not None:
            rows = [r for r in rows if r.fold in set(folds)]
            if not rows:
                raise ConfigError(f"{manifest}: no slide in fold(s) {list(folds)}")
        return cls(rows, storage_options=storage_options, **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> SlideItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"slide {index} of a dataset of {len(self)}")
        index = index % len(self)
        row = self.rows[index]
        return SlideItem(index, row.slide_id, row.label, self.patch_source.grid(index))

    @property
    def labels(self) -> list[int]:
        """Every slide's label, in dataset order (for class weights or stratified samplers)."""
        return [r.label for r in self.rows]

    @staticmethod
    def collate(items: Sequence[SlideItem]) -> SlideBatch:
        """``DataLoader``'s ``collate_fn``: ids and labels as tensors, grids as a list."""
        return SlideBatch(
            torch.tensor([it.index for it in items], dtype=torch.int64),
            torch.tensor([it.label for it in items], dtype=torch.int64),
            [it.slide_id for it in items],
            [it.grid for it in items],
        )
