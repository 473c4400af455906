"""A fault- and latency-injecting HTTP reverse proxy on 127.0.0.1, in a subprocess.

Put it in front of a real object-store server (the moto S3 server, a GCS emulator) to see how
a client behaves on a real network: every request waits ``latency_ms`` before it is forwarded
(concurrently: it adds latency, not a queue), a fraction of them is answered with a transient
error (503 ``SlowDown``, 500, 429) or held for ``stall_s`` seconds (a timeout), and keys can be
denied (403). Error bodies are S3 XML, or the JSON of the GCS API for GCS paths.

The faults can be changed while it runs (:meth:`FaultProxy.configure`), and it counts what it
saw (:meth:`FaultProxy.stats`), through control requests under ``/_fault/``.

Run it by hand::

    python -m wsi_patchgd.testing.proxy --upstream http://127.0.0.1:5000 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .s3 import free_port, stop, wait_for_port

#: the control endpoints live under this path (never forwarded)
CONTROL = "/_fault/"
#: request headers not forwarded (hop-by-hop, or set again by the proxy's client)
_DROP_REQUEST = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
#: response headers not passed back (hop-by-hop, or set again by the proxy's server)
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "server", "date"}
_S3_ERRORS = {
    403: ("AccessDenied", "Access Denied (fault proxy)"),
    429: ("SlowDown", "Please reduce your request rate. (fault proxy)"),
    500: ("InternalError", "We encountered an internal error. Please try again. (fault proxy)"),
    503: ("SlowDown", "Please reduce your request rate. (fault proxy)"),
}


@dataclass
class Faults:
    """What the proxy does to the requests it forwards.

    Attributes:
        latency_ms: added to every forwarded request, milliseconds.
        fail_fraction: this fraction of matching requests is answered with ``fail_status``.
        fail_status: the status of injected failures (503, 500 or 429).
        stall_fraction: this fraction of matching requests is held ``stall_s`` seconds before it
            is forwarded (a client with a shorter timeout sees a timeout).
        stall_s: how long a stalled request is held.
        match: only requests whose path contains this string can fail or stall ("" = all).
        deny: requests whose path contains one of these strings are answered 403.
        seed: seed of the random choice of failing requests.
    """

    latency_ms: float = 0.0
    fail_fraction: float = 0.0
    fail_status: int = 503
    stall_fraction: float = 0.0
    stall_s: float = 5.0
    match: str = ""
    deny: list[str] = field(default_factory=list)
    seed: int = 0


def _error_body(status: int, path: str) -> tuple[bytes, str]:
    """An error response body as the server would send it: GCS JSON or S3 XML."""
    code, message = _S3_ERRORS.get(status, ("InternalError", "fault proxy"))
    if path.startswith(("/storage/", "/download/", "/upload/")):
        doc = {"error": {"code": status, "message": message, "errors": [{"message": message}]}}
        return json.dumps(doc).encode(), "application/json"
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><Resource>{path}</Resource></Error>"
    )
    return xml.encode(), "application/xml"


async def _serve(upstream: str, port: int, faults: Faults) -> None:  # pragma: no cover - subprocess
    import aiohttp
    from aiohttp import web

    rng = random.Random(faults.seed)
    counts = {"requests": 0, "forwarded": 0, "failed": 0, "stalled": 0, "denied": 0, "bytes": 0,
              "in_flight": 0, "max_in_flight": 0}  # fmt: skip
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )

    async def control(request: web.Request) -> web.Response:
        nonlocal faults, rng
        if request.path.endswith("/config") and request.method == "POST":
            change = await request.json()
            faults = Faults(**{**asdict(faults), **change})
            rng = random.Random(faults.seed)
        if request.path.endswith("/reset"):
            for k in counts:
                counts[k] = counts["in_flight"] if k == "in_flight" else 0
        return web.json_response({"faults": asdict(faults), "counts": counts})

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await control(request)
        counts["requests"] += 1
        counts["in_flight"] += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
        try:
            return await forward(request)
        finally:
            counts["in_flight"] -= 1

    async def forward(request: web.Request) -> web.StreamResponse:
        f = faults
        if f.latency_ms > 0:
            await asyncio.sleep(f.latency_ms / 1000)
        path = request.path
        if any(d and d in path for d in f.deny):
            counts["denied"] += 1
            body, ctype = _error_body(403, path)
            return web.Response(status=403, body=body, content_type=ctype)
        if f.match in path:
            draw = rng.random()
            if draw < f.fail_fraction:
                counts["failed"] += 1
                body, ctype = _error_body(f.fail_status, path)
                return web.Response(status=f.fail_status, body=body, content_type=ctype)
            if draw < f.fail_fraction + f.stall_fraction:
                counts["stalled"] += 1
                await asyncio.sleep(f.stall_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        data = await request.read()
        async with session.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=data if data else None,
            allow_redirects=False,
        ) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _DROP_RESPONSE}
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            if request.method != "HEAD":
                async for piece in up.content.iter_chunked(1 << 20):
                    counts["bytes"] += len(piece)
                    await resp.write(piece)
            await resp.write_eof()
        counts["forwarded"] += 1
        return resp

    app = web.Application(client_max_size=1 << 34)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


class FaultProxy:
    """A running proxy: its URL, and control of its faults and counters.

    Args:
        url: ``http://127.0.0.1:<port>``.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + CONTROL + what,
            data=json.dumps(body).encode() if body is not None else None,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - 127.0.0.1 only
            return dict(json.loads(resp.read()))

    def configure(self, **change: Any) -> dict[str, Any]:
        """Change some of the :class:`Faults` (e.g. ``fail_fraction=0.2``); returns them all."""
        return dict(self._call("config", change)["faults"])

    def stats(self) -> dict[str, int]:
        """Requests seen, forwarded, failed, stalled, denied; bytes forwarded back; requests
        in flight now and at most (since the last :meth:`reset_stats`)."""
        return dict(self._call("stats")["counts"])

    def reset_stats(self) -> None:
        """Set the counters to zero."""
        self._call("reset", {})


@contextlib.contextmanager
def fault_proxy(upstream: str, **faults: Any) -> Iterator[FaultProxy]:
    """Start a proxy to ``upstream`` on a free port of 127.0.0.1 (a subprocess); stop it after.

    Args:
        upstream: the server's URL, e.g. ``http://127.0.0.1:5000``.
        **faults: initial :class:`Faults` fields (``latency_ms=20``, ``fail_fraction=0.1``...).

    Yields:
        The running :class:`FaultProxy`.
    """
    port = free_port()
    cfg = Faults(**faults)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from wsi_patchgd.testing.proxy import main; main()",
         "--upstream", upstream, "--port", str(port), "--faults", json.dumps(asdict(cfg))],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield FaultProxy(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - subprocess
    """``python -m wsi_patchgd.testing.proxy``: run a proxy until killed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="server URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--latency-ms", type=float, default=None)
    ap.add_argument("--fail-fraction", type=float, default=None)
    ap.add_argument("--faults", default="{}", help="a JSON object of Faults fields")
    args = ap.parse_args(argv)
    cfg = Faults(**json.loads(args.faults))
    if args.latency_ms is not None:
        cfg.latency_ms = args.latency_ms
    if args.fail_fraction is not None:
        cfg.fail_fraction = args.fail_fraction
    port = args.port or free_port()
    print(f"fault proxy on http://127.0.0.1:{port} -> {args.upstream}", flush=True)
    asyncio.run(_serve(args.upstream.rstrip("/"), port, cfg))


if __name__ == "__main__":  # pragma: no cover
    main()
