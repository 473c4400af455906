"""The fixed setup every part of the training benchmark shares (model, batch, targets)."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "bench_train"
BACKBONE = "mobilenet_v2"
LATENT_DIM = 256
N_CLASSES = 2
BATCH = 1
LOADER_TARGET = 2.0  #: the loader must deliver at least this many times what the backbone eats
DEFAULT_SIZES = "512,1024,2048,4096,8192"
QUICK_SIZES = "512,1024"
MB = 1e6

#: Memory children run glibc malloc with a fixed mmap threshold: every block of 128 KiB or more
#: is its own mapping, returned to the OS when freed, so peak RSS tracks the peak of live
#: allocations (the CPU analogue of ``max_memory_allocated``). With glibc's default (a threshold
#: that rises as blocks are freed), freed memory stays resident and the same step measured
#: +-60 MB from run to run here; with the fixed threshold, +-1 MB. It slows steps down ~2x
#: (an mmap and page faults per allocation), so timings come from separate children with the
#: default allocator.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def settings_doc(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """The ``settings`` block of the result JSON: the fixed setup and this run's options."""
    return {
        "backbone": BACKBONE,
        "weights": None,
        "latent_dim": LATENT_DIM,
        "head": "pooled, 4 convs x 256 channels",
        "batch_size": BATCH,
        "classes": N_CLASSES,
        "optimizer": "Adam lr 1e-3",
        "patch": args.patch,
        "k": args.k,
        "zeta": args.zeta,
        "epsilon": args.epsilon,
        "fill_batch": args.fill_batch,
        "sizes": sizes,
        "repeats": args.repeats,
        "mem_limit_gb": args.mem_limit_gb,
        "memory_metric": "CUDA max_memory_allocated - allocated before the step"
        if args.device == "cuda"
        else "peak RSS (VmHWM, reset right before the step) - RSS before the step, "
        "malloc mmap threshold 128 KiB",
        "device": args.device,
        "quick": args.quick,
    }
