"""Generating an UltraMNIST dataset: canvases laid out, rendered and written in parallel.

:func:`make_ultramnist` checks the arguments, draws balanced labels, renders and writes every
canvas (in worker processes when asked), then writes ``manifest.csv`` and ``meta.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, StoreError, WsiPatchGDError
from ...store import ConvertOptions
from .image_store import write_image_store
from .layout import (
    LABELS,
    MAX_DIGITS,
    MIN_DIGITS,
    SPLITS,
    Canvas,
    check_digit_sizes,
    digit_multisets,
    digit_side_range,
    label_name,
    layout_canvas,
    paper_digit_side_range,
)
from .mnist import MnistPools, default_mnist_dir, load_mnist
from .render import render_canvas

#: Smallest canvas side accepted.
MIN_SIDE = 64


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.every = max(1, total // 10)
        self.lock = threading.Lock()
        self.bar: Any = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="canvas", desc="ultramnist", file=sys.stderr)

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
            elif self.done % self.every == 0 or self.done == self.total:
                print(f"ultramnist: {self.done}/{self.total} canvases", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prepare_out(out: Path, overwrite: bool) -> None:
    stores = out / "stores"
    ours = [out / "manifest.csv", out / "meta.json"]
    existing = [p for p in ours if p.exists()] + (
        sorted(stores.glob("um-*.zarr")) if stores.is_dir() else []
    )
    if existing and not overwrite:
        raise StoreError(
            f"{out}: already holds an UltraMNIST dataset ({existing[0].name}); use --overwrite "
            "to replace it or choose another --out"
        )
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    stores.mkdir(parents=True, exist_ok=True)


class _Generator:
    """Lays out, renders and writes one canvas per job (in this process or a worker)."""

    def __init__(
        self,
        stores: str,
        pools: MnistPools,
        seed: int,
        side: int,
        classes: int,
        options: ConvertOptions,
        label: str = "sum",
        digit_sizes: tuple[int, int] | None = None,
    ) -> None:
        self.stores, self.pools, self.seed = stores, pools, seed
        self.side, self.classes, self.options = side, classes, options
        self.label = label
        self.digit_sizes = digit_sizes
        if digit_sizes is not None:
            self.sizes = check_digit_sizes(digit_sizes, side)
        elif label == "sum10":
            self.sizes = paper_digit_side_range(side)
        else:
            self.sizes = digit_side_range(side)
        self.multisets = digit_multisets(classes, label)
        self.by_digit = {s: pools.by_digit(s) for s in SPLITS}

    def spec(self, mnist_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
        """What a worker process needs to rebuild this generator (it reloads MNIST)."""
        return {
            "stores": self.stores,
            "mnist_dir": None if mnist_dir is None else str(mnist_dir),
            "seed": self.seed,
            "side": self.side,
            "classes": self.classes,
            "label": self.label,
            "digit_sizes": self.digit_sizes,
            "patch_size": self.options.patch_size,
        }

    def __call__(self, job: tuple[str, int, int]) -> Canvas:
        split, i, label = job
        c = layout_canvas(
            split,
            i,
            label,
            self.seed,
            self.side,
            self.multisets,
            self.pools,
            self.by_digit[split],
            self.sizes,
        )
        gray = render_canvas(c, self.side, self.pools)
        write_image_store(
            f"{self.stores}/{c.slide_id}.zarr",
            np.repeat(gray[:, :, None], 3, axis=2),
            name=c.slide_id,
            options=self.options,
            source={
                "generator": "ultramnist",
                "seed": self.seed,
                "classes": self.classes,
                "label": label_name(self.classes, self.label),
                "digit_side_range": list(self.sizes),
            },
        )
        return c


_WORKER: dict[str, _Generator] = {}


def _init_worker(spec: dict[str, Any]) -> None:
    pools = load_mnist(spec["mnist_dir"], spec["seed"])
    options = ConvertOptions(patch_size=spec["patch_size"])
    _WORKER["gen"] = _Generator(
        spec["stores"],
        pools,
        spec["seed"],
        spec["side"],
        spec["classes"],
        options,
        spec["label"],
        spec["digit_sizes"],
    )


def _run_worker(job: tuple[str, int, int]) -> Canvas:
    return _WORKER["gen"](job)


def make_ultramnist(
    out: str | os.PathLike[str],
    n_train: int,
    n_val: int,
    *,
    side: int = 512,
    classes: int = 28,
    seed: int = 0,
    label: str = "sum",
    digit_sizes: tuple[int, int] | None = None,
    mnist_dir: str | os.PathLike[str] | None = None,
    patch_size: int = 32,
    workers: int | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> Path:
    """Generate UltraMNIST canvases straight into stores, with a manifest (see module doc).

    Writes ``out/stores/um-<split>-<i>.zarr`` (split ``train`` or ``val``), ``out/manifest.csv``
    (``slide_id, store, label, fold``; fold 0 = train, 1 = val; store paths relative to
    ``out``) and ``out/meta.json`` (digits, MNIST indices, boxes and scales of every canvas,
    and the digit pools). The same arguments give identical pixels, whatever ``workers``.

    Args:
        out: output folder (local).
        n_train: training canvases.
        n_val: validation canvases.
        side: canvas side in pixels (a multiple of ``patch_size`` keeps every patch whole).
        classes: 28 (label = digit sum, 0..27) or 10 (label = digit sum mod 10).
        label: ``"sum"`` (as ``classes`` says), ``"max"`` (the largest digit; needs
            ``classes=10``) or ``"sum10"`` (the paper's 10 classes: the digit sum, only digit
            sets summing to 0..9; needs ``classes=10``).
        digit_sizes: ``(min, max)`` digit side in canvas pixels, ``8 <= min <= max <= side``
            (default: :func:`digit_side_range`, or :func:`paper_digit_side_range` for
            ``label="sum10"``). Recorded in ``meta.json`` and every store's ``source``.
        seed: seed of everything (pools, labels, digits, sizes, positions).
        mnist_dir: folder of the MNIST IDX files (default: ``$WSI_PATCHGD_MNIST`` or
            ``<repo>/../shared/data/mnist``).
        patch_size: chunk side of the stores (the training patch size).
        workers: processes rendering and writing canvases (default: one per core, at most
            8; 1 = in this process). Zarr encodes a store's chunks in one event-loop thread, so
            processes, not threads, are what scales; they are forked on Linux, spawned
            elsewhere (where a script calling this needs an ``if __name__ == "__main__":``
            guard).
        quiet: a line every 10 % instead of a progress bar.
        overwrite: replace an UltraMNIST dataset already in ``out``.

    Returns:
        The path of ``out/manifest.csv``.

    Raises:
        ConfigError: invalid arguments, missing or corrupt MNIST files, or digits that do not
            fit on the canvas.
        StoreError: ``out`` already holds a dataset and ``overwrite`` is false.
    """
    if classes not in (10, 28):
        raise ConfigError(f"classes={classes}: use 28 (digit sum) or 10 (digit sum mod 10)")
    if label not in LABELS:
        raise ConfigError(f"label={label!r}: use one of {', '.join(LABELS)}")
    if label == "max" and classes != 10:
        raise ConfigError("label=max (the largest digit) has 10 classes: pass classes=10")
    if label == "sum10" and classes != 10:
        raise ConfigError("label=sum10 (digit sums 0..9) has 10 classes: pass classes=10")
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ConfigError(f"n_train={n_train}, n_val={n_val}: need >= 0 each and >= 1 in all")
    if side < MIN_SIDE:
        raise ConfigError(f"side={side}: canvases must be at least {MIN_SIDE} px")
    if digit_sizes is not None:
        digit_sizes = check_digit_sizes(digit_sizes, side)
    try:
        options = ConvertOptions(patch_size=patch_size)
    except WsiPatchGDError as exc:
        raise ConfigError(str(exc)) from exc
    pools = load_mnist(mnist_dir, seed)
    out_p = Path(out)
    jobs: list[tuple[str, int, int]] = []
    for s_i, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        rng = np.random.default_rng(np.random.SeedSequence([seed, s_i, 0x6C6162]))  # "lab"
        blocks = [rng.permutation(classes) for _ in range(-(-n // classes))]
        labels = np.concatenate(blocks)[:n] if blocks else np.zeros(0, np.int64)
        jobs.extend((split, i, int(labels[i])) for i in range(n))
    gen = _Generator(str(out_p / "stores"), pools, seed, side, classes, options, label, digit_sizes)
    for split, n_s in zip(SPLITS, (n_train, n_val), strict=True):
        empty = [d for d in range(10) if not len(gen.by_digit[split][d])]
        if n_s and empty:
            raise ConfigError(
                f"{pools.description}: the {split} pool has no digit {empty[0]}; give the "
                "complete MNIST files"
            )
    _prepare_out(out_p, overwrite)
    n_proc = max(1, min(workers or min(8, os.cpu_count() or 1), len(jobs)))
    progress = _Progress(len(jobs), quiet)
    canvases: list[Canvas] = []
    try:
        if n_proc == 1:
            for job in jobs:
                canvases.append(gen(job))
                progress.advance()
        else:
            # fork on Linux: no __main__ guard needed, MNIST loads in a blink (zarr resets its
            # event loop in forked children); spawn elsewhere
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ProcessPoolExecutor(
                n_proc, mp_context=ctx, initializer=_init_worker, initargs=(gen.spec(mnist_dir),)
            ) as ex:
                for c in ex.map(
                    _run_worker, jobs, chunksize=max(1, min(16, len(jobs) // (4 * n_proc)))
                ):
                    canvases.append(c)
                    progress.advance()
    finally:
        progress.close()
    from ...data.manifest import ManifestRow, write_manifest  # here: wsi_patchgd.data loads torch

    rows = [
        ManifestRow(c.slide_id, f"stores/{c.slide_id}.zarr", c.label, SPLITS.index(c.split))
        for c in canvases
    ]
    manifest = out_p / "manifest.csv"
    write_manifest(str(manifest), rows)
    meta = {
        "generator": "wsi_patchgd.datasets.ultramnist",
        "seed": seed,
        "side": side,
        "classes": classes,
        "label": label_name(classes, label),
        "patch_size": patch_size,
        "digit_sizes": None if digit_sizes is None else list(digit_sizes),
        "digit_side_range": list(gen.sizes),
        "digits_per_canvas": [MIN_DIGITS, MAX_DIGITS],
        "mnist": {
            "dir": str(Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()),
            "pools": pools.description,
            "pool_indices": {s: [pools.pools[s][0], pools.pools[s][1].tolist()] for s in SPLITS},
        },
        "canvases": [asdict(c) | {"scales": c.scales} for c in canvases],
    }
    (out_p / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if quiet:
        print(f"ultramnist: {len(rows)} canvases -> {manifest}", file=sys.stderr)
    return manifest


def read_meta(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a generated dataset."""
    return dict(json.loads((Path(out) / "meta.json").read_text()))
