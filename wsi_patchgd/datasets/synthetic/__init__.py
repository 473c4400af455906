"""Synthetic whole-slide images: large pyramidal JPEG-tiled TIFFs with a hidden label.

A synthetic slide looks like an H&E section on glass: irregular tissue pieces (about 30-60 % of
the area) on a near-white, slightly noisy background. Its class is decidable only from a few
small *marker* regions (each about one or two 256-pixel patches at level 0) whose nuclei differ
by class while their mean colour matches the surrounding tissue, so that a model looking at
full-resolution patches can tell the class but a heavily downscaled thumbnail barely can.

Nothing is held at full resolution: a coarse layout (tissue mask, cellularity and stain
density fields) is computed once, and every tile of every level is rendered independently
from it and from precomputed texture pyramids (so level ``L`` looks like a ``2**L``
downsample of level 0), JPEG-encoded in worker threads and streamed to tifffile in order.

The modules, in the order a slide is made:

* :mod:`.arrays` -- array types, hashing, pooling, flips;
* :mod:`.stain` -- the H&E stain (Beer-Lambert) colour model;
* :mod:`.noise` -- tileable band-pass noise and nuclei stamps;
* :mod:`.texture` -- tissue textures (procedural, or from real tiles) at any level;
* :mod:`.layout` -- the coarse tissue mask and modulation fields of a slide;
* :mod:`.markers` -- the label-carrying marker regions and where they go;
* :mod:`.render` -- one tile of one level as RGB / JPEG;
* :mod:`.slide` -- the TIFF file (:func:`write_synthetic_slide`; its docstring gives the format);
* :mod:`.real_tiles` -- tissue tiles cut from a real slide (:func:`texture_tiles_from_slide`);
* :mod:`.dataset` -- a labelled set of slides, stores and manifest
  (:func:`make_synthetic_dataset`).

Example:
    >>> from wsi_patchgd.datasets.synthetic import write_synthetic_slide
    >>> slide = write_synthetic_slide("slide.tif", 8192, seed=1, label=1)  # doctest: +SKIP
    >>> slide.levels, slide.markers  # doctest: +SKIP
"""

from .dataset import make_synthetic_dataset
from .real_tiles import texture_tiles_from_slide
from .slide import MAX_SIDE, SyntheticSlide, write_synthetic_slide

__all__ = [
    "MAX_SIDE",
    "SyntheticSlide",
    "make_synthetic_dataset",
    "texture_tiles_from_slide",
    "write_synthetic_slide",
]
