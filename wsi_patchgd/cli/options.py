"""Options shared by several commands, and the checks of their values."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import click

from ..errors import ConfigError
from ..io import is_remote, local_path


def parse_storage_options(value: str | None) -> dict[str, Any] | None:
    """``--storage-options '{"endpoint_url": "..."}'`` (JSON) -> dict."""
    if not value:
        return None
    try:
        opts = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON ({exc}): {value!r}", param_hint="'--storage-options'"
        ) from exc
    if not isinstance(opts, dict):
        raise click.BadParameter(
            "must be a JSON object, e.g. '{\"anon\": true}'", param_hint="'--storage-options'"
        )
    return opts


storage_options_option = click.option(
    "--storage-options",
    "storage_options",
    default=None,
    help="fsspec options as JSON for s3:// / gs:// URLs, e.g. "
    '\'{"endpoint_url": "http://127.0.0.1:9000"}\' (also WSI_PATCHGD_STORAGE_OPTIONS).',
)

dashboard_option = click.option(
    "--dashboard",
    is_flag=True,
    help="Serve the local Dask cluster's dashboard on 127.0.0.1 (no authentication) and "
    "print its URL; off by default.",
)

scheduler_option = click.option(
    "--scheduler", default=None, help="Address of a running Dask scheduler."
)

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Rebuild stores that are already complete."
)


def check_writable(path: str, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work starts, an output path that cannot be written.

    ``path`` is a file (or a folder when ``folder``) that may not exist yet: it must not be the
    other kind, and its nearest existing folder must take a new file (probed with a temporary
    file, so that read-only file systems and permissions count as the OS sees them). Remote
    URLs are not probed.

    Raises:
        ConfigError: ``<what> <path>: <reason>; <what to do>``.
    """
    if is_remote(path):
        return
    p = local_path(path)
    if p.exists() and p.is_dir() != folder:
        kind = "a file, not a folder; give a folder" if folder else "a folder; give a file path"
        raise ConfigError(f"{what} {path}: is {kind}")
    anc = p if p.is_dir() else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what} {path}: {anc} is a file, not a folder; fix the path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".wsi-patchgd-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise ConfigError(
            f"{what} {path}: cannot write in {anc} ({why}); check its permissions or choose "
            "another path"
        ) from exc
