"""Training data: manifests of slides, a torch ``Dataset`` of slides, and the store-backed
patch source with prefetching.

:class:`SlideDataset` and :class:`StorePatchSource` (torch) are imported on first use, so that
reading and checking a manifest stays quick.
"""

from typing import TYPE_CHECKING, Any

from .manifest import ManifestRow, read_manifest

if TYPE_CHECKING:
    from .dataset import SlideBatch, SlideDataset, SlideItem
    from .loader import StorePatchSource

__all__ = [
    "ManifestRow",
    "SlideBatch",
    "SlideDataset",
    "SlideItem",
    "StorePatchSource",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name == "StorePatchSource":
        from .loader import StorePatchSource

        return StorePatchSource
    if name in ("SlideDataset", "SlideItem", "SlideBatch"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
