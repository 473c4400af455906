"""Shared pieces of the benchmarks: options, tables and JSON, the machine, test slides.

Every benchmark measures its baseline in the same run, prints a table and writes a JSON file that
also describes the machine (CPU model, cores, RAM, library versions). Each ``bench_*.py`` script
is a thin entry point (options, main); its jobs live in a package of the same name without the
prefix (``benchmarks/convert/``, ``read/``, ``train/``), and what they share lives here
(peak memory of processes: :mod:`benchmarks._memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
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


def parser(
    doc: str, name: str, sizes: str | None, sizes_help: str, quick_help: str
) -> argparse.ArgumentParser:
    """An option parser with what every benchmark has: ``--sizes``, ``--workdir``, ``--json``,
    ``--quick``; its description is the first paragraph of the script's ``doc``."""
    ap = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default=sizes, help=sizes_help)
    ap.add_argument(
        "--workdir",
        default=str(DEFAULT_WORKDIR),
        help="slides and stores go here (default %(default)s)",
    )
    ap.add_argument(
        "--json", default=None, help=f"result file (default benchmarks/results/{name}.json)"
    )
    ap.add_argument("--quick", action="store_true", help=quick_help)
    return ap


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns (a note instead when there are no rows)."""
    if not rows:
        return "  (nothing measured)"

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


def start(
    args: argparse.Namespace, name: str, announce: bool = True
) -> tuple[Path, dict[str, Any]]:
    """What every benchmark does first: create ``--workdir``, describe the machine.

    Args:
        args: the options of :func:`parser`.
        name: the benchmark, for the default result file.
        announce: log the machine's description (a benchmark that adds to it logs it itself).

    Returns:
        (the result file: ``--json`` or :func:`default_json`, :func:`machine_info`).
    """
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else default_json(name, args.quick)
    info = machine_info()
    if announce:
        log(f"machine: {describe_machine(info)}")
    return json_path, info


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


def torch_info(device: str = "cpu") -> dict[str, Any]:
    """torch's version and threads and, for ``device="cuda"``, the GPU it runs on.

    On CUDA: the GPU's name, memory and compute capability, the CUDA and cuDNN versions torch
    was built with, the driver's version (from ``nvidia-smi`` when it is there) and the TF32
    switches (``fp32`` convolutions run as TF32 when ``cudnn_allow_tf32`` is on, torch's
    default).
    """
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
    }
    if device != "cuda" or not torch.cuda.is_available():
        return info
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    info.update(
        gpu_name=torch.cuda.get_device_name(0),
        gpu_count=torch.cuda.device_count(),
        gpu_memory_gb=round(props.total_memory / 2**30, 1),
        gpu_capability=f"{props.major}.{props.minor}",
        cudnn_version=torch.backends.cudnn.version(),
        driver_version=driver or None,
        cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
        matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
        bf16_supported=bool(torch.cuda.is_bf16_supported()),
    )
    return info


def describe_torch(info: dict[str, Any]) -> str:
    """One line of :func:`torch_info`: the GPU, or the CPU with torch's threads."""
    text = f"torch {info['torch']}"
    if info.get("gpu_name"):
        return (
            f"{text}, CUDA {info['cuda_version']}, cuDNN {info['cudnn_version']}, "
            f"{info['gpu_name']} ({info['gpu_memory_gb']} GiB, sm {info['gpu_capability']}, "
            f"driver {info['driver_version']}), TF32 convolutions "
            f"{'on' if info['cudnn_allow_tf32'] else 'off'}"
        )
    return f"{text}, device cpu, {info['torch_threads']} torch threads"


def describe_machine(info: dict[str, Any]) -> str:
    """One line of :func:`machine_info` for the log and the plots (says when the box is busy)."""
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
    """Free GiB on the disk that holds ``path`` (or its nearest existing parent)."""
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
    """Delete a file or a folder tree if it is there."""
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
    """Where :func:`ensure_slide` caches the size x size test slide."""
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
