"""Training data: manifests of slides and the store-backed patch source with prefetching."""

from .loader import StorePatchSource
from .manifest import ManifestRow, read_manifest

__all__ = ["ManifestRow", "StorePatchSource", "read_manifest"]
