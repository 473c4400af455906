"""Training data: manifests of slides and the store-backed patch source with prefetching.

:class:`StorePatchSource` (torch) is imported on first use, so that reading and checking a
manifest stays quick.
"""

from typing import TYPE_CHECKING, Any

from .manifest import ManifestRow, read_manifest

if TYPE_CHECKING:
    from .loader import StorePatchSource

__all__ = ["ManifestRow", "StorePatchSource", "read_manifest"]


def __getattr__(name: str) -> Any:
    if name == "StorePatchSource":
        from .loader import StorePatchSource

        return StorePatchSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
