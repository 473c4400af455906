"""Training engines: Patch Gradient Descent and the standard gradient-descent baseline.

Where things are, by module:

- :mod:`~wsi_patchgd.engine.model`: the models, :class:`PatchGDModel` and :class:`GDModel`
  (modules in the constructors), and :func:`build_patchgd_model` / :func:`build_gd_model`
  (names, as a config gives them);
- :mod:`~wsi_patchgd.engine.source`: where patches are read (:class:`PatchSource`,
  :class:`TensorPatchSource` for in-memory images);
- :mod:`~wsi_patchgd.engine.latent`: the latent Z (:class:`Latent`) and
  :func:`~wsi_patchgd.engine.latent.write_cells`, where features are written into Z;
- :mod:`~wsi_patchgd.engine.fill`: :func:`fill_latent`, filling Z from every tissue patch;
- :mod:`~wsi_patchgd.engine.patchgd`: the PatchGD training step :func:`train_batch` (fill,
  inner iterations, backward) and :func:`predict`;
- :mod:`~wsi_patchgd.engine.gd`: the GD baseline's :func:`gd_train_batch` and
  :func:`gd_predict`;
- :mod:`~wsi_patchgd.engine.step`: what both steps share, among it
  :func:`~wsi_patchgd.engine.step.optimizer_step`, where the engine steps the optimizer.

The engine in your own loop: pass ``optimizer=None`` and it only accumulates gradients (like
``loss.backward()``); you zero them and step, as in any PyTorch loop. With ``epsilon == zeta``
this is exactly the step the engine takes when it is given the optimizer. Example::

    import numpy as np
    import torch
    import torch.nn.functional as F

    from wsi_patchgd.engine import PatchGDSettings, TensorPatchSource, build_patchgd_model
    from wsi_patchgd.sampling import PermutationSampler

    torch.manual_seed(0)
    labels = torch.tensor([0, 1] * 4)  # dark or bright images of 2 x 2 patches
    images = [(torch.rand(3, 32, 32) * 60 + 40 + 120 * int(y)).to(torch.uint8) for y in labels]
    source = TensorPatchSource(images, patch_size=16)
    model = build_patchgd_model("resnet18", 2, out_dim=16, head_channels=16, n_convs=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    patchgd = PatchGDSettings(PermutationSampler(), k=2, zeta=2, epsilon=2, loss_fn=F.cross_entropy)
    rng = np.random.default_rng(0)  # the sampler's randomness: checkpoint it to resume
    losses = []
    for epoch in range(8):
        for ids in ([0, 1, 2, 3], [4, 5, 6, 7]):
            optimizer.zero_grad()
            result = patchgd.train_batch(model, None, source, ids, labels[ids], rng)  # backward
            optimizer.step()  # your step: clip, scale or log the gradients first if you like
            losses.append(result["loss"])
    probs = patchgd.predict(model, source, list(range(8))).softmax(1)
"""

from __future__ import annotations

from wsi_patchgd.engine.fill import fill_latent
from wsi_patchgd.engine.gd import GDStepResult, gd_predict, gd_train_batch, load_image
from wsi_patchgd.engine.latent import Latent
from wsi_patchgd.engine.model import (
    DEFAULT_NORM,
    GDModel,
    PatchGDModel,
    build_gd_model,
    build_patchgd_model,
)
from wsi_patchgd.engine.patchgd import PatchGDSettings, StepResult, predict, train_batch
from wsi_patchgd.engine.source import PatchSource, TensorPatchSource
from wsi_patchgd.engine.step import LossFn, maybe_autocast

__all__ = [
    "DEFAULT_NORM",
    "GDModel",
    "GDStepResult",
    "Latent",
    "LossFn",
    "PatchGDModel",
    "PatchGDSettings",
    "PatchSource",
    "StepResult",
    "TensorPatchSource",
    "build_gd_model",
    "build_patchgd_model",
    "fill_latent",
    "gd_predict",
    "gd_train_batch",
    "load_image",
    "maybe_autocast",
    "predict",
    "train_batch",
]
