"""The ``wsi-patchgd`` command: thin; parses, calls the library, prints.

Every failure is one line ``error: <file or key>: <reason>; <what to do>`` on stderr, never a
traceback, and exit code 2 (batch commands exit 1 when some items failed and the others went
through): a :class:`~wsi_patchgd.errors.WsiPatchGDError` from the library, a bad option value
(click's usage errors), an OS error (permission denied, not a directory, disk full ...), and
as a last resort any other exception (``WSI_PATCHGD_DEBUG=1`` shows its traceback).
Integer options of the same name have the same bounds in every command (:data:`INT_BOUNDS`).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ..errors import WsiPatchGDError

F = TypeVar("F", bound=Callable[..., Any])

#: what to do about an OS error, by errno
_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.EEXIST: "it exists already; remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}

#: bounds of integer options, by parameter name, the same in every command that has one
INT_BOUNDS: dict[str, click.IntRange] = {
    "workers": click.IntRange(1, 1024),
    "shard_patches": click.IntRange(1, 64),  # a shard's index has shard_patches^2 entries
    "patch_size": click.IntRange(8, 8192),
    "max_levels": click.IntRange(1, 32),
    "level": click.IntRange(0, 32),
    "seed": click.IntRange(0, 2**32 - 1),
    "epochs": click.IntRange(1, 100_000),
    "folds": click.IntRange(2, 1000),
    "n_slides": click.IntRange(3, 100_000),  # demo: every third slide is a validation slide
}


def one_line(text: str) -> str:
    """A message on one line (library messages can quote multi-line errors)."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (one line) on stderr and exit with ``code``."""
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def describe_os_error(exc: OSError) -> str:
    """``<file>: <reason>; <what to do>`` for an OS error."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or -1, "check the path, its permissions and the free space")
    return f"{where}: {reason.lower()}; {fix}" if where else f"{reason}; {fix}"


def one_line_errors(fn: F) -> F:
    """Turn library, OS and unexpected errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WsiPatchGDError as exc:
            fail(str(exc))
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            fail(describe_os_error(exc))
        except Exception as exc:
            if os.environ.get("WSI_PATCHGD_DEBUG"):
                raise
            why = (str(exc).strip().splitlines() or [""])[0]
            fail(
                f"unexpected {type(exc).__name__}: {why}; rerun with WSI_PATCHGD_DEBUG=1 for "
                "the traceback and report it"
            )

    return wrapper  # type: ignore[return-value]


class OneLineGroup(click.Group):
    """A group whose usage errors (bad option values, missing arguments) are one line too."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the help text, as click prints it
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "wsi-patchgd"
            fail(f"{exc.format_message().rstrip('.')}; see '{path} --help'", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    for cmd in main.commands.values():
        for param in cmd.params:
            if param.name in INT_BOUNDS and isinstance(param, click.Option):
                if param.type is click.INT:
                    param.type = INT_BOUNDS[param.name]


_register()
