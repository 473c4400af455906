"""Options shared by several commands."""

from __future__ import annotations

import json
from typing import Any

import click


def parse_storage_options(value: str | None) -> dict[str, Any] | None:
    """``--storage-options '{"endpoint_url": "..."}'`` (JSON) -> dict."""
    if not value:
        return None
    try:
        opts = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc}): {value!r}") from exc
    if not isinstance(opts, dict):
        raise click.BadParameter("must be a JSON object")
    return opts


storage_options_option = click.option(
    "--storage-options",
    "storage_options",
    default=None,
    help="fsspec options as JSON for s3:// / gs:// URLs, e.g. "
    '\'{"endpoint_url": "http://127.0.0.1:9000"}\' (also WSI_PATCHGD_STORAGE_OPTIONS).',
)
