"""Typed exceptions. Every user-facing failure is one of these.

The CLI turns a :class:`WsiPatchGDError` into one line (``error: <message>``) and a non-zero
exit code, so every message names the file or key and says what to do.
"""

from __future__ import annotations


class WsiPatchGDError(Exception):
    """Base class of every error this package raises on purpose."""


class SlideReadError(WsiPatchGDError):
    """A slide cannot be opened or read (missing, unsupported, truncated, corrupt)."""


class StoreError(WsiPatchGDError):
    """A store is missing, malformed, or not what the caller expected."""


class StoreIncompleteError(StoreError):
    """A store exists but was never marked complete (conversion interrupted)."""


class ConfigError(WsiPatchGDError):
    """A configuration key is unknown or a value is invalid."""


class ManifestError(WsiPatchGDError):
    """A manifest row is invalid (missing slide, label out of range, bad fold)."""


class MemoryBudgetError(WsiPatchGDError):
    """A memory budget is too small for the smallest possible setting."""


class StorageAccessError(WsiPatchGDError):
    """Remote storage refused access (credentials, bucket, endpoint)."""


class TrainingDivergedError(WsiPatchGDError):
    """The loss became NaN or infinite: training stopped before saving anything from that epoch."""
