"""What each workload reads, and reading it through ``StorePatchSource`` as the engine does.

A workload is a list of phases; a phase is a list of ``(image, indices)`` reads announced
together (``prefetch``) and then read one by one, like ``fill_latent`` (all tissue patches of
the batch's images in storage order, ``fill_bs`` at a time) and the inner iterations of
``train_batch`` (k random tissue patches per image, ``zeta`` times).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

Read = tuple[int, np.ndarray]


@dataclass
class Workload:
    """A named read pattern."""

    name: str
    what: str
    phases: list[list[Read]]

    @property
    def patches(self) -> int:
        return sum(int(idx.size) for phase in self.phases for _, idx in phase)


def fill_reads(source: Any, images: list[int], fill_bs: int) -> list[Read]:
    """Every tissue patch of ``images`` in storage order, ``fill_bs`` per engine call."""
    reads: list[Read] = []
    for image in images:
        idx = source.storage_order(image, source.grid(image).tissue_indices())
        reads += [(image, idx[i : i + fill_bs]) for i in range(0, idx.size, fill_bs)]
    return reads


def random_reads(source: Any, image: int, n: int, k: int, rng: np.random.Generator) -> list[Read]:
    """``n`` reads of ``k`` random tissue patches of one image."""
    tissue = source.grid(image).tissue_indices()
    return [(image, rng.choice(tissue, min(k, tissue.size), replace=False)) for _ in range(n)]


def plans(source: Any, n_images: int, args: Any, rng: np.random.Generator) -> list[Workload]:
    """The three workloads on ``source`` (a local source: the indices are the same remotely)."""
    k = args.k
    epoch: list[list[Read]] = []
    for start in range(0, n_images, args.batch_size):
        batch = list(range(start, min(start + args.batch_size, n_images)))
        epoch.append(fill_reads(source, batch, args.fill_bs))
        epoch.append(
            [r for _ in range(args.zeta) for b in batch for r in random_reads(source, b, 1, k, rng)]
        )
    return [
        Workload(
            "random",
            f"{args.random_reads} reads of {k} random tissue patches (one image)",
            [random_reads(source, 0, args.random_reads, k, rng)],
        ),
        Workload(
            "fill",
            f"Z fill: every tissue patch of one image, storage order, {args.fill_bs} per read",
            [fill_reads(source, [0], args.fill_bs)],
        ),
        Workload(
            "epoch",
            f"{n_images} images, batches of {args.batch_size}: fill + {args.zeta} x k={k} random",
            epoch,
        ),
    ]


def run(source: Any, workload: Workload) -> tuple[float, float]:
    """Read the workload through the source (announced phase by phase).

    Returns:
        (wall seconds, CPU seconds of this process: decoding, requests, cache writes).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    for phase in workload.phases:
        source.prefetch(phase)
        for image, idx in phase:
            source.read(image, idx)
        source.cancel_prefetch()
    return time.perf_counter() - t0, time.process_time() - c0
