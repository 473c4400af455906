"""Readers that other layers add to :func:`~wsi_patchgd.readers.open_slide` by name.

The built-in readers (OpenSlide, tifffile, Pillow) are chosen in :mod:`wsi_patchgd.readers`.
A layer above (the store package, for a converted store) registers its reader here when it is
imported, so that ``open_slide(url)`` opens what it recognises and ``open_slide(url,
reader=name)`` asks for it, without the readers importing that layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..io import StorageOptions
from .base import SlideReader

#: opens ``(source, storage_options)``; raises a :class:`~wsi_patchgd.errors.WsiPatchGDError`
Opener = Callable[[str, "StorageOptions | None"], SlideReader]
#: says whether a directory ``(source, storage_options)`` is one this reader opens (cheap)
Sniff = Callable[[str, "StorageOptions | None"], bool]


@dataclass(frozen=True)
class RegisteredReader:
    """A reader added with :func:`register_reader`."""

    name: str
    opener: Opener
    sniff: Sniff | None = None


#: ``auto`` and the readers :func:`~wsi_patchgd.readers.open_slide` has built in
BUILTIN_READERS = ("auto", "openslide", "tifffile", "pillow")

_REGISTRY: dict[str, RegisteredReader] = {}
_LOCK = threading.Lock()


def register_reader(name: str, opener: Opener, sniff: Sniff | None = None) -> None:
    """Make ``open_slide(source, reader=name)`` call ``opener(source, storage_options)``.

    Args:
        name: the reader's name (not ``auto`` or a built-in one; registering a name again
            replaces it).
        opener: opens a source; raises a ``WsiPatchGDError`` whose message says what is wrong.
        sniff: whether a directory is one this reader opens (asked for every directory unless
            a registered reader is named). Directories no sniff claims are refused; files go to
            the built-in readers.

    Raises:
        ValueError: ``name`` is ``auto`` or a built-in reader's.
    """
    if name in BUILTIN_READERS:
        raise ValueError(f"reader name {name!r} is taken by a built-in reader")
    with _LOCK:
        _REGISTRY[name] = RegisteredReader(name, opener, sniff)


def registered_readers() -> tuple[RegisteredReader, ...]:
    """The readers added with :func:`register_reader`, in the order they were added."""
    with _LOCK:
        return tuple(_REGISTRY.values())


def reader_names() -> tuple[str, ...]:
    """Every name ``open_slide(reader=...)`` accepts now: the built-in ones, then the added."""
    with _LOCK:
        return BUILTIN_READERS + tuple(_REGISTRY)


def registered_reader(name: str) -> RegisteredReader | None:
    """The reader registered as ``name``, or None."""
    with _LOCK:
        return _REGISTRY.get(name)
