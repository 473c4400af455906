"""The functions ``import wsi_patchgd as wp`` offers beside the re-exported classes.

``wp.open_slide`` (any slide, through the reader protocol), ``wp.open_store`` (a converted
slide), ``wp.convert`` (slides -> stores, one process or a Dask cluster) and ``wp.train`` (a run
from a config). Everything the command line does is callable from here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .io import StorageOptions
from .store import ConvertOptions, SlideResult, SlideStore, convert_many

if TYPE_CHECKING:
    from .training.config import RunConfig


def open_store(
    url: str | os.PathLike[str],
    storage_options: StorageOptions | None = None,
    *,
    require_complete: bool = True,
) -> SlideStore:
    """Open a slide store (local path, ``s3://`` or ``gs://`` URL).

    Args:
        url: the store (``<name>.zarr``).
        storage_options: fsspec options for remote URLs (endpoint, credentials).
        require_complete: refuse a store whose conversion has not finished (the default).

    Returns:
        The store: typed metadata (``.meta``), levels, ``read_region`` (h, w, 3) and
        ``read_region_chw``, ``to_dask(level)``, ``level_for_mpp(mpp)``, tissue mask.

    Raises:
        StoreError: not a store, or incomplete (saying what it lacks and what to do).
    """
    return SlideStore(str(url), storage_options, require_complete=require_complete)


def convert(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    options: ConvertOptions | None = None,
    storage_options: StorageOptions | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    report: str | None = None,
    quiet: bool = True,
    **settings: Any,
) -> list[SlideResult]:
    """Convert slides into ``out/<name>.zarr`` stores; a bad slide is reported, not raised.

    Args:
        sources: slide paths, URLs or glob patterns (one or several).
        out: output folder (path or URL).
        options: conversion options; or give their fields as keywords (``patch_size=256,
            codec="jpeg"``, see :class:`~wsi_patchgd.store.ConvertOptions`).
        storage_options: fsspec options for remote sources and stores.
        scheduler: address of a running Dask scheduler (default: a local cluster).
        workers: threads of the local cluster (default: all cores).
        client: an existing ``distributed.Client`` (overrides scheduler and workers).
        report: where to write the JSON report, if anywhere.
        quiet: a line per slide on stderr instead of a progress bar.

    Returns:
        One :class:`~wsi_patchgd.store.SlideResult` per slide (``status`` ok, skipped or failed,
        with the reason).

    Raises:
        ConfigError: an unknown option name, or both ``options`` and keywords.
    """
    if settings:
        if options is not None:
            raise ConfigError("convert: give options= or option keywords, not both")
        names = {f.name for f in dataclasses.fields(ConvertOptions)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ConfigError(
                f"convert: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(names))}"
            )
        options = ConvertOptions(**settings)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    return convert_many(
        [str(s) for s in sources],
        str(out),
        options,
        scheduler=scheduler,
        workers=workers,
        client=client,
        report=report,
        quiet=quiet,
        source_options=storage_options,
        store_options=storage_options,
    )


def train(
    config: RunConfig | dict[str, Any] | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train a run (PatchGD or the GD baseline) and return its summary.

    Args:
        config: a YAML config file, a mapping of its sections, or a
            :class:`~wsi_patchgd.training.config.RunConfig`.
        overrides: ``section.key=value`` strings applied on top (as ``--set`` does).
        resume: continue the run in ``output.dir`` from its last checkpoint.
        quiet: no progress bars (a line per epoch is still logged).

    Returns:
        The summary also written to ``<output.dir>/summary.json``.

    Raises:
        ConfigError: bad config or data; TrainingDivergedError: a loss or weight not finite.
    """
    from .training.config import RunConfig, load_config
    from .training.trainer import train as run

    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("train: overrides need a config file or mapping, not a RunConfig")
        cfg = config
    elif isinstance(config, dict):
        cfg = load_config(None, list(overrides), base=config)
    else:
        cfg = load_config(Path(config), list(overrides))
    return run(cfg, resume=resume, quiet=quiet)
