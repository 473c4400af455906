"""Test helpers shipped with the package (as ``zarr.testing``): real servers on 127.0.0.1.

:func:`~.s3.moto_server` starts an S3-compatible server for tests and benchmarks. Used by this
project's tests and benchmarks; useful to anyone testing code that reads stores from ``s3://``.
"""

from .s3 import free_port, moto_server

__all__ = ["free_port", "moto_server"]
