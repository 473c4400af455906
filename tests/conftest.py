"""Shared fixtures: the real test data, and a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsi_patchgd.errors import WsiPatchGDError
from wsi_patchgd.testing import moto_server

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSI_PATCHGD_TEST_DATA", REPO.parent / "shared" / "data"))
SLIDES = DATA / "slides"
CMU = SLIDES / "cmu-1-small-region.svs"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
KIDNEY = SLIDES / "kidney-48-5.tif"
BROKEN = SLIDES / "broken.svs"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SLIDES.is_dir():
        pytest.fail(
            f"test data not found at {DATA}; set WSI_PATCHGD_TEST_DATA to the shared/data folder"
        )
    return DATA


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A moto S3 server in a subprocess on 127.0.0.1; yields fsspec storage options."""
    try:
        with moto_server() as opts:
            yield opts
    except WsiPatchGDError as exc:
        pytest.fail(str(exc))


@pytest.fixture()
def s3_bucket(s3_server: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh bucket on the moto server: (s3://bucket, storage options)."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(
        **{k: v for k, v in s3_server.items() if k != "endpoint_url"},
        endpoint_url=s3_server["endpoint_url"],
    )
    name = f"b-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    yield f"s3://{name}", dict(s3_server)


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsi_patchgd ARGS`` in a subprocess (the real CLI), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "wsi_patchgd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
