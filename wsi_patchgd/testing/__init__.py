"""Test helpers shipped with the package (as ``zarr.testing``): real servers on 127.0.0.1.

:func:`~.s3.moto_server` starts an S3-compatible server, :func:`~.gcs.gcs_emulator` a GCS
emulator (fake-gcs-server), and :func:`~.proxy.fault_proxy` an HTTP proxy in front of either
that adds latency and injects failures (503 / 500 / 429, stalls, 403 for chosen keys). Used by
this project's tests and benchmarks; useful to anyone testing code that reads stores from
``s3://`` or ``gs://``.
"""

from .gcs import gcs_emulator
from .proxy import FaultProxy, Faults, fault_proxy
from .s3 import free_port, moto_server

__all__ = ["FaultProxy", "Faults", "fault_proxy", "free_port", "gcs_emulator", "moto_server"]
