"""Per-patch layers written into a slide store, for napari and ome-zarr-py: a float image of
one value per patch and an image-label of one class per patch.

What :func:`write_patch_layer` adds to a store (the levels, ``tissue/`` and the root attributes
are not touched; a rerun replaces the layer)::

    <slide>.zarr/
      heatmaps/<name>/          OME-NGFF 0.5 multiscale image, level "0": float32 (y, x), one
                                pixel per patch of the grid the model saw; nan: not scored
      labels/                   attributes {"ome": {"version": "0.5", "labels": [..., <name>]}}
        <name>/                 OME-NGFF 0.5 image-label, level "0": uint8 (y, x); 0: not
                                scored, 1..n: the classes named in its ``properties``

Both carry the same coordinate transformations, in the units of the store's own image (µm where
the store records mpp, else level-0 pixels): pixel (r, c) covers level-0 pixels
``[r * P * d, (r + 1) * P * d)`` in y and likewise in x, with P the patch size and d the
downsample of the level the model read. Its scale is ``P * d * u`` (u: the size of one level-0
pixel) and its translation ``(P * d - 1) / 2 * u``, because OME-NGFF viewers (napari) put the
centre of pixel j at ``j * scale + translation``, as they put level-0 pixel j at ``j * u``: the
layer lies exactly over the patches in the viewer.

A float image cannot be an OME-NGFF label (labels are integers, and napari refuses to open a
float one), which is why the values are an image of their own under ``heatmaps/``: open
``<slide>.zarr`` in napari for the slide with the class overlay, ``<slide>.zarr/heatmaps/<name>``
for the values.

Writes are all or nothing: locally the layer is written beside its place and renamed into it;
on object storage its multiscales attributes (what makes it a layer to a reader) are written
after its array, and the label is registered in ``labels`` after it is complete.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from ..io import StorageOptions, filesystem, is_remote, join, local_path, zarr_store
from .format import OME_VERSION
from .slide_store import SlideStore

#: the group of float per-patch images
HEATMAP_GROUP = "heatmaps"
#: the OME-NGFF labels group
LABELS_GROUP = "labels"
#: our attribute on a layer's group: what it holds and the grid it was made on
LAYER_ATTR = "wsi_patchgd_layer"


@dataclass(frozen=True)
class PatchLayout:
    """Where the patches of one level's grid lie on the slide's level 0.

    Attributes:
        level: the level the patches were read from.
        patch_size: patch side P, in that level's pixels.
        downsample: that level's downsample d (level-0 pixels per level pixel).
        level_shape: (height, width) of that level.
        base_shape: (height, width) of level 0.
        mpp: micrometres per level-0 pixel; None where the store does not record it.
    """

    level: int
    patch_size: int
    downsample: float
    level_shape: tuple[int, int]
    base_shape: tuple[int, int]
    mpp: float | None

    @classmethod
    def of(cls, store: SlideStore, level: int, patch_size: int | None = None) -> PatchLayout:
        """The layout of ``level``'s grid of a store (patch size: the store's by default)."""
        return cls(
            level=level,
            patch_size=int(patch_size or store.patch_size),
            downsample=float(store.downsample(level)),
            level_shape=store.level_shape(level),
            base_shape=store.level_shape(0),
            mpp=store.mpp,
        )

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(n_h, n_w) of the grid (the last row/column padded)."""
        p = self.patch_size
        return -(-self.level_shape[0] // p), -(-self.level_shape[1] // p)

    @property
    def patch_extent(self) -> float:
        """Side of one patch in level-0 pixels, P * d."""
        return self.patch_size * self.downsample

    def box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of patch (row, col) in level-0 pixels, clipped to level 0.

        The padded last row/column ends where the level ends (scaled to level 0).
        """
        p, d = self.patch_size, self.downsample
        (h, w), (bh, bw) = self.level_shape, self.base_shape
        x0, y0 = min(col * p * d, bw), min(row * p * d, bh)
        x1 = min(min((col + 1) * p, w) * d, bw)
        y1 = min(min((row + 1) * p, h) * d, bh)
        return x0, y0, x1, y1

    def transformations(self) -> list[dict[str, Any]]:
        """OME-NGFF coordinate transformations of a one-pixel-per-patch layer (y, x)."""
        u = self.mpp or 1.0
        s = self.patch_extent * u
        t = (self.patch_extent - 1) / 2 * u
        return [
            {"type": "scale", "scale": [s, s]},
            {"type": "translation", "translation": [t, t]},
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "patch_size": self.patch_size,
            "downsample": self.downsample,
            "level_shape": list(self.level_shape),
            "base_shape": list(self.base_shape),
        }


@dataclass(frozen=True)
class LabelClass:
    """One class of a label layer: its value (1..255), name and RGB colour."""

    value: int
    name: str
    color: tuple[int, int, int]


def _multiscales(name: str, layout: PatchLayout, kind: str) -> dict[str, Any]:
    unit = {"unit": "micrometer"} if layout.mpp else {}
    return {
        "name": name,
        "axes": [
            {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit},
        ],
        "datasets": [{"path": "0", "coordinateTransformations": layout.transformations()}],
        "type": kind,
    }


def _write_group(
    group: zarr.Group, data: np.ndarray, fill: Any, ome: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Array ``0`` first, then the attributes that make the group a layer to a reader."""
    chunks = tuple(min(n, 1024) or 1 for n in data.shape)
    arr = group.create_array(
        "0",
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        fill_value=fill,
        dimension_names=["y", "x"],
    )
    arr[...] = data
    group.attrs.update({"ome": {"version": OME_VERSION, **ome}, LAYER_ATTR: meta})


def _ensure_group(root: zarr.Group, path: str) -> zarr.Group:
    try:
        node = root[path]
    except KeyError:
        return root.create_group(path)
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{path} is an array, not a group; remove it from the store")
    return node


def _put_node(
    url: str,
    storage_options: StorageOptions | None,
    rel: str,
    data: np.ndarray,
    fill: Any,
    ome: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Write one layer group at ``url/rel``, replacing what is there, all or nothing."""
    if not is_remote(url):
        dest = local_path(url) / rel
        for left in dest.parent.glob(f".{dest.name}.*-*"):  # of a killed earlier write
            if not _alive(left.name.rsplit("-", 2)[-2]):  # not another live process's
                shutil.rmtree(left, ignore_errors=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
        group = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        _write_group(group, data, fill, ome, meta)
        old = dest.with_name(f".{dest.name}.old-{tag}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs, path = filesystem(join(url, rel), storage_options)
    fs.invalidate_cache(path)
    if fs.exists(path + "/zarr.json"):
        fs.rm(path + "/zarr.json")  # first: no reader takes a half-replaced layer for one
    if fs.exists(path):
        fs.rm(path, recursive=True)
    group = zarr.open_group(zarr_store(join(url, rel), storage_options), mode="w")
    _write_group(group, data, fill, ome, meta)


def _alive(pid: str) -> bool:
    """Whether ``pid`` is another running process (whose layer temp folder may be in use)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def write_patch_layer(
    url: str,
    name: str,
    values: np.ndarray,
    layout: PatchLayout,
    classes: np.ndarray | None = None,
    class_info: Sequence[LabelClass] = (),
    description: str = "",
    storage_options: StorageOptions | None = None,
) -> dict[str, str]:
    """Write a per-patch float image (and optionally a label) into a complete store.

    Args:
        url: the store (its :attr:`~SlideStore.location`: where its data is).
        name: the layer's name (``heatmaps/<name>``, ``labels/<name>``).
        values: (n_h, n_w) values, one per patch of ``layout``'s grid; nan: not scored.
        layout: where those patches lie (see :class:`PatchLayout`).
        classes: optional (n_h, n_w) integer classes for the label (0: none).
        class_info: name and colour of each class value in ``classes``.
        description: what the values are (kept in the layer's attributes).
        storage_options: fsspec options of a remote store.

    Returns:
        Layer kind (``image``, ``label``) -> its path inside the store.

    Raises:
        StoreError: bad arguments, or the store cannot be written (read-only storage,
            permissions ...): the message names the store; nothing of its own is changed.
    """
    if not name or "/" in name or name.startswith("."):
        raise StoreError(f"{url}: layer name {name!r} must be a plain name, e.g. patchgd")
    values = np.asarray(values, dtype=np.float32)
    if values.shape != layout.grid_shape:
        raise StoreError(
            f"{url}: layer {name!r} has shape {values.shape}, the grid of level "
            f"{layout.level} with patch size {layout.patch_size} is {layout.grid_shape}"
        )
    if classes is not None and np.asarray(classes).shape != values.shape:
        raise StoreError(f"{url}: layer {name!r}: classes and values differ in shape")
    so = storage_options
    meta = {"description": description, **layout.to_dict()}
    written = {"image": f"{HEATMAP_GROUP}/{name}"}
    try:
        root = zarr.open_group(zarr_store(url, so), mode="r+")
        _ensure_group(root, HEATMAP_GROUP)
        ms = _multiscales(name, layout, "patch values")
        _put_node(url, so, written["image"], values, math.nan, {"multiscales": [ms]}, meta)
        if classes is not None:
            written["label"] = f"{LABELS_GROUP}/{name}"
            label: dict[str, Any] = {
                "colors": [{"label-value": c.value, "rgba": [*c.color, 255]} for c in class_info],
                "properties": [{"label-value": c.value, "class": c.name} for c in class_info],
                "source": {"image": "../../"},
            }
            ome = {
                "multiscales": [_multiscales(name, layout, "patch classes")],
                "image-label": label,
            }
            data = np.asarray(classes, dtype=np.uint8)
            _put_node(url, so, written["label"], data, 0, ome, meta)
            labels = _ensure_group(root, LABELS_GROUP)
            have = labels.attrs.get("ome")
            lo: dict[str, Any] = dict(have) if isinstance(have, dict) else {}
            listed = lo.get("labels")
            names = [str(n) for n in listed] if isinstance(listed, list) else []
            if name not in names:  # registered once it is complete
                lo.update(version=OME_VERSION, labels=[*names, name])
                labels.attrs["ome"] = lo
    except StoreError:
        raise
    except Exception as exc:  # read-only storage, permissions, a full disk ...
        why = (str(exc).strip().splitlines() or [""])[0]
        raise StoreError(
            f"{url}: cannot write the layer {name!r} into the store ({type(exc).__name__}: "
            f"{why}); its levels and tissue are unchanged, the layer may be missing or "
            "incomplete. Make the store writable and rerun, or leave the layer out"
        ) from exc
    return written
