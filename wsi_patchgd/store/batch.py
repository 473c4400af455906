"""Many slides in one job, with a progress bar and a JSON report.

On one machine the shard tasks run on a thread pool of this process: no cluster to start and
``distributed`` not even imported (a threaded ``LocalCluster`` does the same work through its
scheduler and TCP comms; on the conversion benchmark that overhead was a third of the lossless
conversion's time and four fifths of a JPEG passthrough's). Give ``scheduler`` (``tcp://host:8786``)
to run them on any Dask cluster, so SLURM/PBS via dask-jobqueue and Kubernetes via
dask-kubernetes work with no code of ours (the workers must import ``wsi_patchgd`` and reach the
sources and the output URL); ``dashboard`` runs a ``LocalCluster`` (bound to 127.0.0.1) to watch.
A failing slide is reported and skipped; the others finish.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..errors import WsiPatchGDError
from ..io import StorageOptions, filesystem, is_remote, join
from .convert import SlideResult, convert_slide, store_name
from .plan import ConvertOptions
from .tasks import ShardDone, ShardRunner, ShardTask, thread_shard_runner, write_shard

_GLOB_CHARS = set("*?[")


def expand_sources(
    inputs: Sequence[str], storage_options: StorageOptions | None = None
) -> tuple[list[str], list[SlideResult]]:
    """Expand globs (local or remote). Returns (sources, failures for patterns matching nothing)."""
    out: list[str] = []
    failed: list[SlideResult] = []
    for item in inputs:
        if not _GLOB_CHARS & set(item):
            out.append(item)
            continue
        if is_remote(item):
            fs, _ = filesystem(item, storage_options)
            proto = item.split("://", 1)[0]
            matches = [f"{proto}://{m}" for m in sorted(fs.glob(item.split("://", 1)[1]))]
        else:
            matches = sorted(glob.glob(item))
        if not matches:
            failed.append(
                SlideResult(
                    item, "", "failed", f"{item}: no file matches this pattern; check the pattern"
                )
            )
        out.extend(matches)
    return out, failed


@contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    dashboard: bool = False,
    log: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """A distributed Client: to ``scheduler`` if given, else on a fresh threaded LocalCluster.

    The local cluster listens on 127.0.0.1 only (scheduler, worker and their HTTP servers, on
    free ports), and serves no dashboard unless ``dashboard`` (then on 127.0.0.1 too, its URL
    passed to ``log``, stderr by default): none of it has authentication, so nothing is
    reachable from another machine. A running ``scheduler``'s own settings are its own.
    """
    from distributed import Client, LocalCluster

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if scheduler:
        with Client(scheduler) as client:
            if dashboard:
                say(f"dashboard: {client.dashboard_link} (as the scheduler at {scheduler} set it)")
            yield client
        return
    threads = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            processes=False,
            host="127.0.0.1",
            protocol="tcp://",  # inproc:// cannot bind to 127.0.0.1
            dashboard_address="127.0.0.1:0" if dashboard else None,
            # with no dashboard the scheduler's HTTP server (health, metrics) would take port
            # 8787 of the host's address; a free port on 127.0.0.1 instead
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0", "dashboard": dashboard},
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        if dashboard:
            say(f"dashboard: {cluster.dashboard_link} (127.0.0.1 only, no authentication)")
        yield client


def dask_shard_runner(client: Any) -> ShardRunner:
    """Run a batch of shard tasks as a lazy Dask graph on ``client``. The first failure
    cancels the others and is raised once none is running (no shard is written after)."""
    import dask
    from distributed import as_completed, wait

    def run(tasks: list[ShardTask], on_done: Callable[[ShardDone], None]) -> None:
        graph = [dask.delayed(write_shard, pure=False)(*t) for t in tasks]
        futures = client.compute(graph)
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            client.cancel(futures)
            wait(futures)
            raise

    return run


class _Progress:
    """A megapixel progress bar over the whole job, or a line per slide in quiet mode."""

    def __init__(self, n_slides: int, quiet: bool) -> None:
        self.quiet = quiet
        self.n = n_slides
        self.done = 0
        self.lock = threading.Lock()
        self.bar: Any = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=0.0,
                unit="MP",
                desc="convert",
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} MP "
                "[{elapsed}<{remaining}, {rate_fmt}]",
            )

    def plan(self, mp: float) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.total += mp
                self.bar.refresh()

    def advance(self, mp: float) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(mp)

    def slide_done(self, r: SlideResult) -> None:
        with self.lock:
            self.done += 1
            line = f"[{self.done}/{self.n}] {r.status}: {r.source}"
            if r.status == "ok":
                line += f" -> {r.store} ({r.megapixels:.1f} MP, {r.seconds:.1f} s)"
            elif r.reason:
                line += f" ({r.reason})" if r.status == "skipped" else ""
            if r.status == "failed":
                line = f"error: {r.reason}"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def convert_many(
    inputs: Sequence[str],
    out: str,
    options: ConvertOptions | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    report: str | None = None,
    quiet: bool = False,
    source_options: StorageOptions | None = None,
    store_options: StorageOptions | None = None,
    client: Any = None,
    max_parallel_slides: int = 4,
    dashboard: bool = False,
) -> list[SlideResult]:
    """Convert slides into ``out/<name>.zarr`` stores; never stops at a bad slide.

    Args:
        inputs: slide paths, URLs or glob patterns.
        out: output root (path or URL).
        options: conversion options.
        scheduler: address of a running Dask scheduler (default: this process's threads).
        workers: threads of this process's pool or of the LocalCluster (default: all cores).
        report: where to write the JSON report (path or URL), if anywhere.
        quiet: a line per slide instead of a progress bar.
        source_options, store_options: fsspec options.
        client: an existing ``distributed.Client`` to use (overrides scheduler/workers).
        max_parallel_slides: slides prepared and written at once.
        dashboard: run the job on a LocalCluster and serve its Dask dashboard on 127.0.0.1,
            printing its URL (:func:`dask_client`).

    Returns:
        One :class:`SlideResult` per input slide (ok / failed / skipped), in input order.
    """
    options = options or ConvertOptions()
    sources, failures = expand_sources(inputs, source_options)
    names: dict[str, str] = {}
    progress = _Progress(len(sources) + len(failures), quiet)
    results: dict[int, SlideResult] = {}
    for f in failures:
        progress.slide_done(f)

    def one(i: int, src: str, runner: Callable[..., None]) -> None:
        name = store_name(src)
        dest = join(out, name)
        if name in names:
            r = SlideResult(
                src, dest, "failed", f"{src}: same store name as {names[name]}; rename one of them"
            )
        else:
            names[name] = src
            try:
                r = convert_slide(
                    src,
                    dest,
                    options,
                    source_options=source_options,
                    store_options=store_options,
                    run_shards=runner,
                    on_progress=progress.advance,
                    on_plan=progress.plan,
                )
            except WsiPatchGDError as exc:
                r = SlideResult(src, dest, "failed", str(exc))
            except Exception as exc:  # a bug or an unexpected library error: still one line
                r = SlideResult(src, dest, "failed", f"{src}: {type(exc).__name__}: {exc}")
        results[i] = r
        progress.slide_done(r)

    def run_all(runner: ShardRunner) -> None:
        with ThreadPoolExecutor(max_workers=max(1, max_parallel_slides)) as pool:
            list(pool.map(lambda a: one(a[0], a[1], runner), enumerate(sources)))

    try:
        if sources and client is not None:
            run_all(dask_shard_runner(client))
        elif sources and scheduler is None and not dashboard:
            with ThreadPoolExecutor(workers or os.cpu_count() or 1, "wsi-shard") as threads:
                run_all(thread_shard_runner(threads))
        elif sources:
            with dask_client(scheduler, workers, dashboard=dashboard) as cl:
                run_all(dask_shard_runner(cl))
    finally:
        progress.close()
    ordered = failures + [results[i] for i in range(len(sources)) if i in results]
    if report:
        write_report(report, ordered, options, store_options)
    return ordered


def write_report(
    url: str,
    results: Sequence[SlideResult],
    options: ConvertOptions,
    storage_options: StorageOptions | None = None,
) -> None:
    """Write the JSON report (atomically for local paths)."""
    from dataclasses import asdict

    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    locked = sum(r.status == "skipped" and (r.reason or "").startswith("locked") for r in results)
    doc = {
        "summary": {
            **counts,
            "locked": locked,  # of the skipped: another job was converting them
            "total": len(results),
            "megapixels": sum(r.megapixels for r in results),
        },
        "options": {
            k: (v.to_dict() if hasattr(v, "to_dict") else v)
            for k, v in asdict(options).items()
            if k != "tissue"
        }
        | {"tissue": options.tissue.to_dict()},
        "slides": [asdict(r) for r in results],
    }
    data = json.dumps(doc, indent=2).encode()
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        fs.pipe_file(path, data)
        return
    tmp = f"{url}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, url)
