"""The ``wsi-patchgd`` command: thin; parses, calls the library, prints.

Every :class:`~wsi_patchgd.errors.WsiPatchGDError` becomes one line ``error: ...`` on stderr
and exit code 2 (batch commands exit 1 when some items failed and the others went through).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import WsiPatchGDError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WsiPatchGDError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wsi_patchgd")
def main() -> None:
    """Tile gigapixel slides into sharded Zarr stores and train CNNs on them with PatchGD."""


def _register() -> None:
    from . import convert, datasets, demo, info, train

    for mod in (convert, info, demo):
        main.add_command(mod.command)
    for cmd in (
        train.train_command,
        train.evaluate_command,
        train.predict_command,
        datasets.make_ultramnist_command,
        datasets.prepare_panda_command,
        datasets.make_synthetic_command,
    ):
        main.add_command(cmd)


_register()
