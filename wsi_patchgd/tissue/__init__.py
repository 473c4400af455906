"""Tissue detection on slide thumbnails, and per-patch tissue fractions.

:func:`detect_tissue` turns a low-resolution RGB thumbnail of a slide (H&E or IHC) into a boolean
tissue mask; :func:`patch_tissue_fractions` turns such a mask into the exact tissue fraction of
every patch of a pyramid level's patch grid (what the sampler needs). The parameters of the
detector live in a frozen :class:`TissueParams` that is recorded in every store
(:meth:`TissueParams.to_dict`), so a mask can always be reproduced.

The modules: :mod:`.params` (:class:`TissueParams` and its validation), :mod:`.detect` (the
``"hsv-otsu"`` method, step by step, and why; :func:`detect_tissue`, :func:`tissue_fraction`)
and :mod:`.fractions` (:func:`summed_area_table`, :func:`patch_tissue_fractions`).
"""

from .detect import detect_tissue, tissue_fraction
from .fractions import patch_tissue_fractions, summed_area_table
from .params import TissueParams

__all__ = [
    "TissueParams",
    "detect_tissue",
    "patch_tissue_fractions",
    "summed_area_table",
    "tissue_fraction",
]
