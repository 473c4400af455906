"""Every path is a URL: plain paths, ``file://``, ``s3://``, ``gs://``, ``memory://``.

One place turns a URL plus fsspec ``storage_options`` into a filesystem, a Zarr store or an open
file, so that the rest of the package never cares where bytes live.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import zarr
import zarr.storage
from zarr.abc.store import Store

from .errors import ConfigError, StorageAccessError

StorageOptions = Mapping[str, Any]

_REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory", "http", "https")


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for URLs with a non-local protocol (``s3://``, ``gs://``, ``memory://`` ...)."""
    s = str(url)
    return "://" in s and s.split("://", 1)[0] not in ("file", "local")


def local_path(url: str | os.PathLike[str]) -> Path:
    """The local path of a plain path or ``file://`` URL."""
    s = str(url)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return Path(s)


#: what :func:`redact_storage_options` writes in place of a secret
REDACTED = "<redacted>"
#: option names (any nesting level, case-insensitive) whose values are credentials
_SECRET_NAMES = {"key", "secret", "token", "password", "passwd", "credentials", "sas"}
_SECRET_PARTS = (
    "secret", "password", "passwd", "token", "credential", "access_key", "account_key",
    "private_key", "api_key", "connection_string",
)  # fmt: skip
#: gcsfs ``token`` modes that name an auth method, not a credential
_PUBLIC_TOKENS = {"anon", "google_default", "cache", "cloud", "browser"}


def _is_secret(name: str, value: Any) -> bool:
    n = name.lower()
    if n == "token" and isinstance(value, str) and value in _PUBLIC_TOKENS:
        return False
    return n in _SECRET_NAMES or any(part in n for part in _SECRET_PARTS)


def redact_storage_options(opts: Any) -> Any:
    """A copy of fsspec ``storage_options`` with every credential replaced by :data:`REDACTED`.

    Credentials are ``key``, ``secret``, ``token``, ``password`` and any option whose name holds
    secret / token / password / credential / access_key / account_key ... at any nesting level
    (``client_kwargs: {aws_secret_access_key: ...}``). Everything else (``endpoint_url``,
    ``anon``, ``region_name``, ``requester_pays`` ...) is kept. What is written to a run
    directory or a checkpoint goes through this; :func:`storage_options_from_env` drops the
    markers again, so the credentials of a later run come from ``WSI_PATCHGD_STORAGE_OPTIONS``
    or the provider's usual chain (``AWS_ACCESS_KEY_ID`` / ``~/.aws`` / instance roles for s3fs).
    """
    if isinstance(opts, Mapping):
        return {
            k: REDACTED if _is_secret(str(k), v) and v is not None else redact_storage_options(v)
            for k, v in opts.items()
        }
    if isinstance(opts, (list, tuple)):
        return [redact_storage_options(v) for v in opts]
    return opts


def drop_redacted(opts: Any) -> Any:
    """``opts`` without the options :func:`redact_storage_options` replaced (at any level)."""
    if isinstance(opts, Mapping):
        return {k: drop_redacted(v) for k, v in opts.items() if v != REDACTED}
    if isinstance(opts, (list, tuple)):
        return [drop_redacted(v) for v in opts if v != REDACTED]
    return opts


def storage_options_from_env(url: str, given: StorageOptions | None = None) -> dict[str, Any]:
    """Storage options for ``url``: ``given`` merged over ``WSI_PATCHGD_STORAGE_OPTIONS`` (JSON).

    For ``s3://`` the endpoint also comes from ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT_URL``, as
    boto does, so that S3-compatible servers (MinIO, Ceph, moto) work without code. Options
    that were redacted (a config or checkpoint saved by a run) are ignored, so that the
    credentials come from the environment instead.
    """
    opts: dict[str, Any] = {}
    env = os.environ.get("WSI_PATCHGD_STORAGE_OPTIONS")
    if env:
        fix = 'set it to a JSON object of fsspec options (e.g. {"anon": true}) or unset it'
        try:
            from_env = json.loads(env)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"WSI_PATCHGD_STORAGE_OPTIONS: not valid JSON ({exc.msg} at character "
                f"{exc.pos}); {fix}"
            ) from exc
        if not isinstance(from_env, dict):
            raise ConfigError(f"WSI_PATCHGD_STORAGE_OPTIONS: not a JSON object; {fix}")
        opts.update(from_env)
    given = drop_redacted(given) if given else given
    if str(url).startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "client_kwargs" not in opts:
            opts["endpoint_url"] = endpoint
    if given:
        opts = _merge(opts, given)
    return opts


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``, nested mappings (``client_kwargs``) key by key."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = _merge(old, v) if isinstance(v, Mapping) and isinstance(old, dict) else v
    return out


def _gcs_emulated(url: str, opts: Mapping[str, Any]) -> bool:
    return url.startswith(("gs://", "gcs://")) and bool(
        opts.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
    )


def _url_to_fs(url: str, opts: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """``fsspec.core.url_to_fs``, except for a GCS emulator (an ``endpoint_url``).

    gcsfs 2025+ makes ``gs://`` an ``ExtendedGcsFileSystem`` that asks the Storage Control
    API (gRPC) for every bucket's layout; an emulator serves only the JSON API, so each lookup
    waits out a 60 s timeout and is not remembered. An emulator gets the plain JSON-API
    ``gcsfs.core.GCSFileSystem`` instead.
    """
    if _gcs_emulated(url, opts):
        import gcsfs.core

        cls = gcsfs.core.GCSFileSystem
        return cls(**opts), str(cls._strip_protocol(url))
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, str(path)


def filesystem(
    url: str | os.PathLike[str],
    storage_options: StorageOptions | None = None,
    *,
    streaming: int | None = None,
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``url``.

    Args:
        url: a path or URL.
        storage_options: fsspec options.
        streaming: for the streaming reader (:mod:`wsi_patchgd.store.remote`), which retries
            requests itself and keeps this many in flight: s3fs then gets a connection pool of
            that size and no retries of its own (where ``storage_options`` do not say otherwise).
    """
    s = str(url)
    if not is_remote(s):
        return fsspec.filesystem("file"), str(local_path(s).absolute())
    opts = storage_options_from_env(s, storage_options)
    if streaming and s.startswith(("s3://", "s3a://")):
        no_retries = {"total_max_attempts": 1, "mode": "standard"}
        defaults = {
            "config_kwargs": {"retries": no_retries, "max_pool_connections": int(streaming)}
        }
        user_retries = opts.get("config_kwargs", {}).get("retries")
        opts = _merge(defaults, opts)
        fs, path = _url_to_fs(s, opts)
        if user_retries is None:
            fs.retries = 1  # s3fs's own retry loop (a class attribute, not an option)
        return fs, path
    return _url_to_fs(s, opts)


def zarr_store(
    url: str | os.PathLike[str],
    storage_options: StorageOptions | None = None,
    *,
    read_only: bool = False,
) -> Store:
    """A Zarr v3 store for ``url`` (LocalStore for local paths, FsspecStore otherwise)."""
    s = str(url)
    if not is_remote(s):
        return zarr.storage.LocalStore(local_path(s), read_only=read_only)
    opts = storage_options_from_env(s, storage_options)
    try:
        if _gcs_emulated(s, opts):
            fs, path = _url_to_fs(s, {**opts, "asynchronous": True})  # as from_url does
            return zarr.storage.FsspecStore(fs, path=path, read_only=read_only)  # type: ignore[arg-type]
        return zarr.storage.FsspecStore.from_url(s, storage_options=opts, read_only=read_only)
    except Exception as exc:  # credentials, endpoint, bucket
        raise StorageAccessError(
            f"{s}: cannot open storage ({exc}); check the URL, credentials and endpoint"
        ) from exc


def join(url: str, *parts: str) -> str:
    """Join URL path parts with '/' (local paths too)."""
    out = str(url).rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def basename(url: str) -> str:
    """The last path component of a URL or path."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]
