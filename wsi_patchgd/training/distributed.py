"""Training on several processes: ``torchrun`` and DistributedDataParallel.

``torchrun --nproc_per_node N -m wsi_patchgd train CONFIG`` (and ``--nnodes`` / rendezvous as
torchrun gives them) starts N copies of the trainer; :func:`init_distributed` finds torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), joins the process
group — ``nccl`` when the run's device is CUDA (one GPU per local rank), ``gloo`` on CPU — and
returns a :class:`Dist`. Without torchrun it returns the single-process ``Dist()``, and
everything below is a no-op.

How the work is shared (the outcome does not depend on the number of processes):

- ``schedule.batch_size`` stays the *global* batch. Every process draws the same shuffled order
  (keyed by seed and epoch), cuts it into the same global batches, and takes its share of each
  (:meth:`Dist.share`: slides ``rank, rank + N, ...`` of the batch). A last batch with fewer
  slides than processes is dropped (a warning says so); with ``batch_size`` a multiple of N and
  the train set a multiple of ``batch_size`` nothing is dropped.
- Each process's loss is scaled by ``local / global`` slides x N, so DDP's average of the
  gradients is the gradient of the mean loss over the global batch, also when a batch does not
  split evenly.
- Gradients are all-reduced only on the backward that precedes an optimizer step
  (``no_sync`` for the other ``epsilon - 1``: see :func:`~wsi_patchgd.engine.step.no_sync_unless`).
- Patch sampling and augmentation are keyed by (seed, epoch, slide), not by a stream.
- BatchNorm: under ``patchgd.norm: frozen`` the running statistics each process refreshes are
  averaged over the processes before every fill
  (:func:`~wsi_patchgd.models.norm.average_running_statistics`); ``group`` has no batch
  statistics; under ``batch`` each process normalises with its own patches' statistics (as DDP
  does by default; ``SyncBatchNorm`` needs CUDA and the same number of backbone calls on every
  process, which the per-slide fill does not have), and the running statistics kept for
  evaluation are rank 0's (DDP broadcasts buffers).
- Validation is sharded the same way and the predictions gathered; rank 0 alone writes
  metrics, checkpoints, plots and the summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

T = TypeVar("T")

#: seconds a process waits in a collective for the others before the job fails
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``Dist()``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's part of a global batch (or of the validation slides)."""
        return list(items[self.rank :: self.world])

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order (on every process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group when there is one; ``Dist()`` otherwise.

    Args:
        device: the run's ``device`` setting: CUDA (``auto`` on a GPU machine, ``cuda``) uses
            ``nccl`` and the GPU of the local rank; CPU uses ``gloo``.

    Raises:
        ConfigError: a ``cuda:N`` device under torchrun (each process takes its local rank's
            GPU: use ``device=cuda`` or ``auto``), or more local processes than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Dist(rank, world, local)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if ":" in device:
            raise ConfigError(
                f"device={device!r} under torchrun: each process uses its local rank's GPU; "
                "use device=cuda (or auto)"
            )
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local} but {torch.cuda.device_count()} GPU(s) here; start at "
                "most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
    timeout = float(os.environ.get("WSI_PATCHGD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return Dist(rank, world, local)


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun, else itself.

    ``find_unused_parameters`` is on: an inner iteration in which a process has no patch to
    recompute (all its slides' patches done) leaves the backbone out of that backward.
    """
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shutdown(d: Dist) -> None:
    """Leave the process group (at the end of a run, also after an error)."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def warn(d: Dist, message: str) -> None:
    """A warning line, from rank 0 only."""
    if d.main:
        print(f"warning: {message}", file=sys.stderr, flush=True)
