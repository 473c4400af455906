"""What ``predict --heatmaps DIR`` writes for each slide, from one fill of Z:

- ``DIR/heatmap-<slide>.png``: the heat map over a thumbnail (:func:`.evaluate.write_heatmap`);
- ``DIR/<slide>.geojson``: the scored patches for QuPath (:func:`qupath_features`);
- the layer ``patchgd`` inside the slide's store: ``heatmaps/patchgd`` (float, one pixel per
  patch) and ``labels/patchgd`` (Positive / Negative), for napari and ome-zarr-py
  (:func:`wsi_patchgd.store.layers.write_patch_layer`).

The value of a patch is its contribution to the slide's predicted class (gradient x input of
that class's logit over the patch's latent vector, summed over D: the heat map's value). Only
the patches the model scored are written: those of the grid whose tissue fraction reaches
``data.tissue_threshold``; background patches (never run through the backbone) and the padding
past the slide's edge are left out (nan in the float layer, 0 in the label).

Classification (QuPath's own ``Positive`` / ``Negative`` classes, in their colours): Positive
where the contribution is > 0 (the patch is evidence for the predicted class), Negative where it
is <= 0 (evidence against it). The measurements of each patch: ``Contribution`` (to the
predicted class), ``Contribution class <k>`` for every class k, ``Tissue fraction``, ``Grid row``
and ``Grid column``. Coordinates are level-0 pixels (x right, y down), as QuPath uses them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..plots import file_stem
from ..store.layers import LabelClass, PatchLayout, write_patch_layer
from .evaluate import latent_contributions, write_heatmap
from .report import plot_or_warn
from .setup import Setup

#: the store layer's name (``heatmaps/patchgd``, ``labels/patchgd``)
LAYER_NAME = "patchgd"
#: QuPath's standard classes and colours; label values of the store's label layer
POSITIVE = LabelClass(2, "Positive", (200, 50, 50))
NEGATIVE = LabelClass(1, "Negative", (112, 112, 225))
#: the GeoJSON ``objectType`` (QuPath: a tile, a detection that measurement maps colour)
OBJECT_TYPE = "tile"


def qupath_features(
    slide_id: str,
    contributions: np.ndarray,
    pred: int,
    layout: PatchLayout,
    fractions: np.ndarray | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the scored patches, in QuPath's format (0.4 and later).

    Args:
        slide_id: names the features' ids (stable UUIDs: a rerun gives the same ids).
        contributions: (K, n_h, n_w) per-class contributions, nan where no patch was scored.
        pred: the slide's predicted class (whose contribution is the patch's value).
        layout: the grid's place on level 0 (:class:`~wsi_patchgd.store.layers.PatchLayout`).
        fractions: (n_h, n_w) tissue fractions, when known.

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``, one Feature per scored patch, in
        row-major grid order.
    """
    heat = contributions[pred]
    rows, cols = np.nonzero(np.isfinite(heat))
    features = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        x0, y0, x1, y1 = (round(v, 3) for v in layout.box(r, c))
        v = float(heat[r, c])
        cls = POSITIVE if v > 0 else NEGATIVE
        measurements: dict[str, float] = {"Contribution": v}
        for k in range(contributions.shape[0]):
            measurements[f"Contribution class {k}"] = float(contributions[k, r, c])
        if fractions is not None:
            measurements["Tissue fraction"] = float(fractions[r, c])
        measurements.update({"Grid row": r, "Grid column": c})
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wsi-patchgd:{slide_id}:{r}:{c}")),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                },
                "properties": {
                    "objectType": OBJECT_TYPE,
                    "classification": {"name": cls.name, "color": list(cls.color)},
                    "isLocked": True,
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON to a temporary file and rename it into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, allow_nan=False))
    os.replace(tmp, path)
    return path


def sign_classes(heat: np.ndarray) -> np.ndarray:
    """The label layer of a heat map: 0 not scored, Negative (<= 0) and Positive (> 0)."""
    out = np.zeros(heat.shape, np.uint8)
    ok = np.isfinite(heat)
    out[ok & (heat > 0)] = POSITIVE.value
    out[ok & ~(heat > 0)] = NEGATIVE.value
    return out


def write_slide_outputs(
    setup: Setup,
    image: int,
    folder: Path,
    log: Callable[..., None],
    store_layer: bool = True,
) -> dict[str, Any]:
    """Heat-map PNG, QuPath GeoJSON and store layer of one slide; failures are warnings.

    Returns:
        ``pred``, ``probs``, and the paths written (``png``, ``geojson``, ``layer``: the
        layer's paths inside the store), those not written left out.
    """
    row = setup.rows[image]
    store = setup.source.store(image)
    level = setup.source.levels[image]
    layout = PatchLayout.of(store, level, setup.source.patch_size)
    contrib, probs = latent_contributions(setup, image)
    pred = int(np.argmax(probs))
    heat = contrib[pred]
    stem = file_stem(row.slide_id)
    done: dict[str, Any] = {"pred": pred, "probs": probs.tolist()}
    png = folder / f"heatmap-{stem}.png"
    png.unlink(missing_ok=True)  # an earlier run's picture is not this run's
    plot_or_warn(log, png, lambda: write_heatmap(setup, image, png, heat=heat))
    if png.is_file():
        done["png"] = str(png)
    gj = folder / f"{stem}.geojson"
    fractions = setup.source.grid(image).fractions
    try:
        write_json(gj, qupath_features(row.slide_id, contrib, pred, layout, fractions))
        done["geojson"] = str(gj)
    except (OSError, ValueError) as exc:
        log(f"warning: {gj}: GeoJSON not written ({type(exc).__name__}: {exc}); going on")
    if store_layer:
        try:
            done["layer"] = write_patch_layer(
                store.location,
                LAYER_NAME,
                heat,
                layout,
                sign_classes(heat),
                (NEGATIVE, POSITIVE),
                "contribution of each patch to the predicted class (gradient x input); "
                f"predicted class {pred}",
                storage_options=setup.source.storage_options,
            )
        except Exception as exc:  # a read-only (remote) store: the other outputs stand
            why = (str(exc).strip().splitlines() or [""])[0]
            if not isinstance(exc, StoreError):  # not expected: say what it was
                why = f"{store.location}: layer not written ({type(exc).__name__}: {why})"
            log(f"warning: {why}")
    return done
