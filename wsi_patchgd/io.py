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

from .errors import StorageAccessError

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


def storage_options_from_env(url: str, given: StorageOptions | None = None) -> dict[str, Any]:
    """Storage options for ``url``: ``given`` merged over ``WSI_PATCHGD_STORAGE_OPTIONS`` (JSON).

    For ``s3://`` the endpoint also comes from ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT_URL``, as
    boto does, so that S3-compatible servers (MinIO, Ceph, moto) work without code.
    """
    opts: dict[str, Any] = {}
    env = os.environ.get("WSI_PATCHGD_STORAGE_OPTIONS")
    if env:
        opts.update(json.loads(env))
    if str(url).startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "client_kwargs" not in opts:
            opts["endpoint_url"] = endpoint
    if given:
        opts.update(given)
    return opts


def filesystem(
    url: str | os.PathLike[str], storage_options: StorageOptions | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``url``."""
    s = str(url)
    if not is_remote(s):
        return fsspec.filesystem("file"), str(local_path(s).absolute())
    opts = storage_options_from_env(s, storage_options)
    fs, path = fsspec.core.url_to_fs(s, **opts)
    return fs, path


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
