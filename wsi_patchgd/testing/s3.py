"""A real S3-compatible server (moto) in a subprocess on 127.0.0.1, always stopped after use."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import WsiPatchGDError

#: the dummy credentials moto accepts (nothing secret)
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """Block until something listens on 127.0.0.1:port.

    Raises:
        WsiPatchGDError: nothing did within ``timeout`` s, or ``proc`` exited first.
    """
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                raise WsiPatchGDError(
                    f"no server on 127.0.0.1:{port} within {timeout:.0f} s"
                ) from None
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server subprocess; kill it if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def moto_server(log: bool = False) -> Iterator[dict[str, str]]:
    """Start ``moto_server`` on a free port of 127.0.0.1; yield fsspec storage options for it.

    The AWS credential variables are set to moto's dummy values while it runs (botocore wants
    some) and restored afterwards.

    Raises:
        WsiPatchGDError: ``moto_server`` is not installed (the ``test`` extra) or did not start.
    """
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        raise WsiPatchGDError(
            "moto_server not found: install the test extra (pip install -e '.[test]')"
        )
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = {k: os.environ.get(k) for k in CREDENTIALS}
    try:
        wait_for_port(port, proc)
        os.environ.update(CREDENTIALS)
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(proc)
        if log:
            print(f"moto_server (pid {proc.pid}) stopped", file=sys.stderr)
