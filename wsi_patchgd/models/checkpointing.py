"""Gradient checkpointing of a torchvision trunk: its top-most ``nn.Sequential`` modules run
each child under :func:`torch.utils.checkpoint.checkpoint` (timm models use timm's own
``set_grad_checkpointing``, see :mod:`wsi_patchgd.models.timm_backbones`)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointedSequential", "enable_checkpointing"]


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` that runs each child with parameters under gradient checkpointing.

    Only while training with autograd enabled; otherwise it is a plain ``nn.Sequential``. The
    state-dict keys are those of the sequential it replaces. BatchNorm layers inside a
    checkpointed child update their running statistics twice per step (forward and
    recomputation); use ``eval_norm`` or accept the slightly faster-moving averages.
    """

    def forward(self, input: Tensor) -> Tensor:
        """Apply the children in order, checkpointing each one that has parameters."""
        use_ckpt = self.training and torch.is_grad_enabled()
        for module in self:
            has_params = next(module.parameters(), None) is not None
            if use_ckpt and has_params:
                input = checkpoint(module, input, use_reentrant=False)
            else:
                input = module(input)
        return input


def enable_checkpointing(module: nn.Module) -> int:
    """Turn the top-most ``nn.Sequential`` modules of ``module`` into checkpointed ones; return
    how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential) and len(child) >= 2:
            replacement = CheckpointedSequential(OrderedDict(child.named_children()))
            replacement.train(child.training)
            setattr(module, name, replacement)
            count += 1
        else:
            count += enable_checkpointing(child)
    return count
