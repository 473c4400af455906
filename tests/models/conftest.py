"""The training tests' small slide set (PNG canvases converted into real stores)."""

from __future__ import annotations

from tests.training.conftest import tiny_dataset

__all__ = ["tiny_dataset"]
