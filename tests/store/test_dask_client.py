"""The local Dask cluster of ``convert`` / ``make-synthetic`` / ``prepare-panda``: every socket it
opens listens on 127.0.0.1, and no dashboard is served unless asked for (``--dashboard``)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import KIDNEY
from wsi_patchgd.store import dask_client


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_local_cluster_binds_loopback_and_serves_no_dashboard() -> None:
    before = _listening()
    with dask_client(workers=1) as client:
        opened = _listening() - before
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert info["workers"] and all(a.startswith("tcp://127.0.0.1:") for a in info["workers"])
        # the scheduler, the worker and their HTTP servers: all on loopback, none on 0.0.0.0/::
        assert len(opened) >= 3
        assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        http_port = info["services"]["dashboard"]  # the HTTP server (health / metrics) only
        assert ("127.0.0.1", http_port) in opened and http_port != 8787
        assert _status(f"http://127.0.0.1:{http_port}/status") == 404  # no dashboard page
        assert client.submit(sum, [1, 2]).result() == 3  # and it works
    assert _listening() - before == set()


def test_dashboard_on_request_is_served_on_loopback_and_its_url_printed() -> None:
    lines: list[str] = []
    before = _listening()
    with dask_client(workers=1, dashboard=True, log=lines.append) as client:
        opened = _listening() - before
        assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        assert len(lines) == 1 and link in lines[0]
        assert _status(link) == 200  # the dashboard (or dask's "install bokeh" page)


@pytest.mark.parametrize("command", ["convert", "make-synthetic", "prepare-panda"])
def test_dashboard_flag(command: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "wsi_patchgd", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "--dashboard" in r.stdout and "127.0.0.1" in r.stdout


def test_convert_prints_dashboard_url_only_when_asked(tmp_path: Path, data_dir: Path) -> None:
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wsi_patchgd", "convert", str(KIDNEY), "--out",
             str(tmp_path / "out"), "--patch-size", "128", "--workers", "1", "-q", *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    r = run("--dashboard")
    assert r.returncode == 0, r.stderr
    assert "dashboard: http://127.0.0.1:" in r.stderr
    r = run("--overwrite")
    assert r.returncode == 0, r.stderr
    assert "dashboard:" not in r.stderr + r.stdout and "127.0.0.1" not in r.stderr
