"""UltraMNIST: large black canvases holding 3-5 MNIST digits of widely varying size.

The synthetic benchmark of the PatchGD paper (Gupta et al., 2023), after the UltraMNIST
dataset of Gupta et al. (2022). This is a re-implementation, not the released dataset (which
holds 4000 x 4000 JPEGs); it is generated straight into slide stores, reproducibly from a seed.

One canvas:

- a black square of side ``S`` with 3 to 5 white MNIST digits on it;
- **label** = sum of its digits, 0..27 (``classes=28``, the paper's task). Only digit sets
  whose sum is at most 27 are used, so 4 and 5 digits never exceed the 28 classes.
  ``classes=10`` is a 10-class variant in which **label = sum mod 10**;
  ``label="sum10"`` (with ``classes=10``) is the 10-class variant of the PatchGD paper and its
  reference generator (nyunAI/PatchGD, ``START_SUM=0, END_SUM=9`` on 512 px canvases):
  **label = sum of the digits**, only digit sets summing to 0..9 being used (so they hold many
  zeros: 0,0,0 is a canvas of label 0), with digits of 1x..9x MNIST's 28 px by default (see
  :func:`paper_digit_side_range`);
  ``label="max"`` (with ``classes=10``) is a variant in which **label = the largest digit**
  on the canvas: a task whose answer often sits in one small digit, so it needs the full
  resolution as the sum does, but that a network learns in far fewer steps;
- classes are balanced: the labels of a split are successive random permutations of the
  classes (so every class appears n // classes or one more times), and each canvas takes
  a digit multiset drawn uniformly among the multisets of 3-5 digits with that label, as in the
  reference generator (so most canvases hold 5 digits);
- digit sides lie between ``max(8, S/40)`` and ``S/2`` pixels (up to 20x apart;
  :func:`digit_side_range`), or in the range ``digit_sizes`` gives, or for ``label="sum10"``
  in the paper's ``28 S/512`` .. ``252 S/512`` (28..252 px on 512 px canvases); drawn
  log-uniformly with a V-shaped weight that favours the extremes 5:1 over the middle (the
  reference generator's scale distribution is V-shaped too); digits are scaled from 28 x 28
  with area averaging when shrunk and bilinear interpolation when enlarged;
- the digits' square boxes (the full scaled 28 x 28 cell) never overlap: positions are drawn by
  rejection sampling (:data:`~.layout.PLACEMENT_TRIES` candidates per digit); when a digit
  finds no room the whole layout is redrawn (sizes too), at most :data:`~.layout.LAYOUT_TRIES`
  times, then :class:`~wsi_patchgd.errors.ConfigError` (canvas too small).

Digit pools: with the full MNIST files (``train-*`` and ``t10k-*``) training canvases take
training digits and validation canvases test digits. With only the official 10,000-digit test
set (what the shared test data holds) the digits are split into disjoint pools, stratified by
digit, :data:`VAL_FRACTION` of each digit going to validation (seeded).

Stores: canvases are written straight into stores with the layout of
:mod:`wsi_patchgd.store.format` (grey digits replicated into RGB uint8; pyramid levels by the
same 2x2 mean as conversion), with no PNG in between and no tissue detection: the detector
looks for stained tissue and would discard a black canvas. Instead the tissue mask is all true
and every patch's tissue fraction is 1 (``meta["tissue"]["method"] == "all"``), so training
samples every patch of the canvas, empty ones included, as PatchGD does on UltraMNIST. Choose
``side`` a multiple of ``patch_size``: otherwise the last patch row and column are padded white
(the store's fill value) and partly outside the canvas.

The modules: :mod:`.mnist` (IDX files, digit pools), :mod:`.layout` (digits, sizes and
positions of a canvas), :mod:`.render` (the canvas's pixels), :mod:`.image_store` (an image
as a store) and :mod:`.generate` (the whole dataset: :func:`make_ultramnist`).
"""

from .generate import MIN_SIDE, make_ultramnist, read_meta
from .image_store import write_image_store
from .layout import (
    LABELS,
    LAYOUT_TRIES,
    MAX_DIGITS,
    MIN_DIGIT_SIDE,
    MIN_DIGITS,
    PLACEMENT_TRIES,
    Canvas,
    check_digit_sizes,
    digit_multisets,
    digit_side_range,
    label_name,
    layout_canvas,
    paper_digit_side_range,
)
from .mnist import (
    MNIST_SIDE,
    VAL_FRACTION,
    MnistPools,
    default_mnist_dir,
    load_mnist,
    read_idx,
    split_pool,
)
from .render import render_canvas, resize_digit

__all__ = [
    "LABELS",
    "LAYOUT_TRIES",
    "MAX_DIGITS",
    "MIN_DIGITS",
    "MIN_DIGIT_SIDE",
    "MIN_SIDE",
    "MNIST_SIDE",
    "PLACEMENT_TRIES",
    "VAL_FRACTION",
    "Canvas",
    "MnistPools",
    "check_digit_sizes",
    "default_mnist_dir",
    "digit_multisets",
    "digit_side_range",
    "label_name",
    "layout_canvas",
    "load_mnist",
    "make_ultramnist",
    "paper_digit_side_range",
    "read_idx",
    "read_meta",
    "render_canvas",
    "resize_digit",
    "split_pool",
    "write_image_store",
]
