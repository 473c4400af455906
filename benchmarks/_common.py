"""Shared pieces of the benchmarks: machine description, test slides, subprocess peak RSS, tables.

Every benchmark measures its baseline in the same run, prints a table and writes a JSON file that
also describes the machine (CPU model, cores, RAM, library versions).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR = Path("/tmp/wsi_bench")

#: Real slides whose tissue textures the synthetic benchmark slides are built from.
TEXTURE_SLIDES = ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs")
#: Texture tiles taken from each real slide.
TILES_PER_SLIDE = 32


# --------------------------------------------------------------------------------------------
# output


def log(msg: str) -> None:
    """One progress line, flushed at once (benchmarks run for minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_sizes(text: str) -> list[int]:
    """``"8192,32768"`` -> [8192, 32768]."""
    sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    if not sizes or min(sizes) < 256:
        raise SystemExit(f"--sizes {text!r}: give comma-separated slide sides >= 256")
    return sizes


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def default_json(name: str, quick: bool) -> Path:
    """``benchmarks/results/<name>.json`` (``<name>.quick.json`` for smoke runs)."""
    return RESULTS / f"{name}{'.quick' if quick else ''}.json"


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write a result document atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, p)
    return p


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python and the versions of the libraries that matter."""
    import psutil

    versions: dict[str, str] = {}
    for mod in (
        "numpy",
        "zarr",
        "dask",
        "distributed",
        "numcodecs",
        "tifffile",
        "imagecodecs",
        "openslide",
        "s3fs",
        "wsi_patchgd",
    ):
        try:
            m = __import__(mod)
            versions[mod] = str(getattr(m, "__version__", "?"))
        except Exception:  # not installed: say so rather than fail the benchmark
            versions[mod] = "missing"
    try:
        import openslide

        versions["libopenslide"] = str(openslide.__library_version__)
    except Exception:
        pass
    return {
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_at_start": os.getloadavg(),
        "code": code_version(),
    }


def code_version() -> dict[str, Any]:
    """The commit the package was at and whether ``wsi_patchgd/`` had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "wsi_patchgd"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return {"commit": None, "package_dirty": None}
    return {"commit": commit or None, "package_dirty": bool(dirty)}


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model']}, {info['cores_logical']} logical cores, {info['ram_gb']} GiB RAM, "
        f"Python {info['python']}, zarr {info['versions'].get('zarr')}, "
        f"dask {info['versions'].get('dask')}, OpenSlide {info['versions'].get('libopenslide')}; "
        f"load average {info['loadavg_at_start'][0]:.1f}"
        + (
            " (BUSY: other processes compete for the cores)"
            if info["loadavg_at_start"][0] > 0.5 * (info["cores_logical"] or 1)
            else ""
        )
    )


def disk_free_gb(path: str | Path) -> float:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free / 2**30


def dir_size_mb(path: str | Path) -> float:
    """Bytes on disk under a directory (or of a file), in MB (10^6)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / 1e6
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / 1e6


def remove(path: str | Path) -> None:
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


# --------------------------------------------------------------------------------------------
# test slides


def data_dir() -> Path:
    """The shared real test data: ``$WSI_PATCHGD_TEST_DATA`` or ``<repo>/../shared/data``."""
    d = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (d / "slides").is_dir():
        raise SystemExit(
            f"test data not found at {d}; set WSI_PATCHGD_TEST_DATA to the shared/data folder"
        )
    return d


def texture_tiles() -> list[np.ndarray]:
    """Real tissue tiles (256 x 256 RGB) from the real slides in the shared data."""
    from wsi_patchgd.datasets.synthetic import texture_tiles_from_slide

    tiles: list[np.ndarray] = []
    for i, name in enumerate(TEXTURE_SLIDES):
        tiles += texture_tiles_from_slide(data_dir() / "slides" / name, TILES_PER_SLIDE, seed=i)
    return tiles


def slide_path(workdir: str | Path, size: int) -> Path:
    return Path(workdir) / "slides" / f"tissue_{size}.tif"


def ensure_slide(workdir: str | Path, size: int, tiles: list[np.ndarray] | None = None) -> Path:
    """The cached size x size JPEG-tiled pyramidal TIFF textured with real tissue; built if missing.

    Built by :func:`wsi_patchgd.datasets.synthetic.write_synthetic_slide` from real tiles of the
    shared test slides (flipped/rotated, placed on glass with empty regions, like a real slide).
    """
    from wsi_patchgd.datasets.synthetic import write_synthetic_slide

    path = slide_path(workdir, size)
    if path.exists():
        log(f"slide {size}x{size}: cached {path} ({path.stat().st_size / 1e6:,.0f} MB)")
        return path
    need_gb = size * size * 3 / 2**30 / 8  # JPEG q90 H&E: ~1/8 of raw, a generous guess
    if disk_free_gb(path.parent) < need_gb + 1:
        raise SystemExit(f"not enough disk under {path.parent} for a {size}^2 slide")
    log(f"slide {size}x{size}: building {path} from real tissue tiles ...")
    t0 = time.perf_counter()
    write_synthetic_slide(path, size, seed=size % 9973, texture_tiles=tiles or texture_tiles())
    log(
        f"slide {size}x{size}: built in {time.perf_counter() - t0:.1f} s "
        f"({path.stat().st_size / 1e6:,.0f} MB)"
    )
    return path


# --------------------------------------------------------------------------------------------
# subprocess runs with peak RSS


def run_measured(cmd: list[str], result_json: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd``, sampling the RSS of its whole process tree every 0.1 s.

    The child writes its own result (a JSON object) to ``result_json``; it should include
    ``maxrss_self_mb`` (``getrusage(RUSAGE_SELF).ru_maxrss``) and ``maxrss_children_mb``.

    Returns:
        The child's result plus ``wall_s`` (the child's lifetime as seen from here),
        ``peak_rss_tree_mb`` (largest sampled sum of RSS over the tree) and ``peak_rss_mb``
        (the larger of that and the child's own high-water mark ``maxrss_self_mb``, since
        sampling can miss a short spike).
    """
    import psutil

    remove(result_json)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                return
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with status {rc}")
    res = json.loads(result_json.read_text())
    res["wall_s"] = wall
    res["peak_rss_tree_mb"] = peak / 1e6
    res["peak_rss_mb"] = max(peak / 1e6, res.get("maxrss_self_mb", 0.0))
    return res


def own_rusage() -> dict[str, float]:
    """This process's peak RSS in MB, for :func:`run_measured`.

    ``maxrss_self_mb`` is the peak of this process image only: ``VmHWM`` from
    ``/proc/self/status`` on Linux. ``getrusage(RUSAGE_SELF).ru_maxrss`` is NOT used for that
    on Linux because it survives ``fork`` + ``exec``: a child started by a 600 MB parent reports
    at least 600 MB. It is kept as ``ru_maxrss_mb`` for reference.
    """
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return {
        "maxrss_self_mb": hwm if hwm is not None else ru,
        "ru_maxrss_mb": ru,
        "maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 1e6,
    }
