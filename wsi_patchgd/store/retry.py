"""Retrying object-store requests: which errors are worth another try, and how long to wait.

:func:`classify` sorts an exception from s3fs / gcsfs / obstore / aiohttp into *missing* (404:
the object is not there, which for a shard means "all fill value"), *transient* (throttling
429 / 503 ``SlowDown``, other 5xx, timeouts, dropped connections: try again after a backoff) or
*permanent* (403, a bad range, anything unknown: stop). :func:`with_retries` runs one request
under a :class:`RetryPolicy`: exponential backoff with jitter between tries, a timeout per try
and a deadline for the whole request, and one clear :class:`~wsi_patchgd.errors.StorageAccessError`
naming the object's URL when it gives up.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import StorageAccessError
from .iostats import IOStats

T = TypeVar("T")

MISSING = "missing"
TRANSIENT = "transient"
PERMANENT = "permanent"

#: S3 / GCS error codes that mean "try again later"
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestTimeout",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "InternalError", "ServiceUnavailable",
    "ServerBusy", "OperationAborted", "RequestTimeoutException",
}  # fmt: skip
#: exception class names (anywhere in the MRO) of dropped connections and network timeouts
_TRANSIENT_TYPES = {
    "TimeoutError", "ConnectionError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError",
    "IncompleteRead", "ServerDisconnectedError", "ClientConnectorError", "ClientPayloadError",
    "ClientOSError", "ServerTimeoutError", "ClientConnectionError", "FSTimeoutError",
    "HTTPClientError", "ProtocolError",
}  # fmt: skip
_STATUS_IN_TEXT = re.compile(r"\bstatus(?: code)?[:= ]{1,3}([1-5][0-9][0-9])\b", re.I)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one request is tried.

    Attributes:
        attempts: tries in all (1 = no retry).
        base_delay: the backoff before the second try, seconds; it doubles with every try.
        max_delay: the backoff never exceeds this, seconds.
        timeout: one try that takes longer than this (seconds) is a transient error.
        deadline: no new try starts once the request has taken this long, seconds.
    """

    attempts: int = 8
    base_delay: float = 0.05
    max_delay: float = 5.0
    timeout: float = 60.0
    deadline: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed try number ``attempt`` (1-based): exponential, with jitter.

        "Equal jitter": half the exponential step for sure, the other half uniformly random, so
        that clients throttled at the same moment do not come back at the same moment.
        """
        step = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return step / 2 + (rng or random).uniform(0, step / 2)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def http_status(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and service error code behind an exception (either may be None)."""
    status: int | None = None
    code: str | None = None
    for e in _chain(exc):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = code or resp.get("Error", {}).get("Code")
            s = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(s, int) and status is None:
                status = s
        for attr in ("status", "code", "status_code"):
            v = getattr(e, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and 100 <= v < 600:
                status = status or v
        if status is None:
            m = _STATUS_IN_TEXT.search(str(e))
            if m:
                status = int(m.group(1))
    return status, code


def classify(exc: BaseException) -> str:
    """:data:`MISSING`, :data:`TRANSIENT` or :data:`PERMANENT` (see the module docstring)."""
    names = {c.__name__ for e in _chain(exc) for c in type(e).__mro__}
    status, code = http_status(exc)
    if isinstance(exc, FileNotFoundError) or "NotFoundError" in names or status == 404:
        return MISSING
    if status in (408, 429) or (status is not None and status >= 500):
        return TRANSIENT
    if code in _TRANSIENT_CODES:
        return TRANSIENT
    if status is not None and 400 <= status < 500:
        return PERMANENT
    if isinstance(exc, PermissionError) or names & {
        "PermissionDeniedError",
        "UnauthenticatedError",
    }:
        return PERMANENT
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout)) or names & _TRANSIENT_TYPES:
        return TRANSIENT
    text = str(exc).lower()
    if "timed out" in text or "connection reset" in text or "error sending request" in text:
        return TRANSIENT
    return PERMANENT


def describe(exc: BaseException) -> str:
    """A short, one-line account of a request error (status, code, message)."""
    status, code = http_status(exc)
    what = " ".join(str(x) for x in (status, code) if x)
    msg = " ".join(str(exc).split())[:200] or type(exc).__name__
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not str(exc):
        msg = "timed out"
    return f"{what}: {msg}" if what and what not in msg else msg


def _permanent_message(url: str, exc: BaseException) -> str:
    status, _ = http_status(exc)
    if status in (401, 403) or isinstance(exc, PermissionError):
        fix = "access denied; check the credentials and the bucket's permissions"
    elif status == 416:
        fix = "the object is shorter than its shard index says (was the store rewritten?)"
    else:
        fix = "the request failed"
    return f"{url}: {fix} ({describe(exc)})"


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    url: str,
    policy: RetryPolicy,
    stats: IOStats | None = None,
    rng: random.Random | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds, retrying transient errors under ``policy``.

    Args:
        attempt: makes and awaits one request (called once per try).
        url: the object's URL, for the error message.
        policy: tries, backoff, timeout, deadline.
        stats: counts ``requests`` and ``retries`` there.
        rng: random source of the jitter (tests).

    Returns:
        What the request returned.

    Raises:
        FileNotFoundError: the object is not there (404).
        StorageAccessError: a permanent error, or transient errors until the tries or the
            deadline ran out; the message names ``url``.
    """
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        if stats is not None:
            stats.add(requests=1)
        try:
            return await asyncio.wait_for(attempt(), policy.timeout)
        except Exception as exc:  # noqa: BLE001 - sorted by classify
            kind = classify(exc)
            if kind == MISSING:
                raise FileNotFoundError(url) from exc
            if kind == PERMANENT:
                raise StorageAccessError(_permanent_message(url, exc)) from exc
            waited = time.monotonic() - start
            delay = policy.delay(tries, rng)
            if tries >= policy.attempts or waited + delay >= policy.deadline:
                raise StorageAccessError(
                    f"{url}: the object store still fails after {tries} tries in {waited:.1f} s "
                    f"({describe(exc)}); it is throttling or unavailable: retry later"
                ) from exc
            if stats is not None:
                stats.add(retries=1)
            await asyncio.sleep(delay)
