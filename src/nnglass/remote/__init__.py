"""Remote execution: the JSON wire format, the client backend and job handles, request and status schemas.

`nnglass.remote.job(job_id)` re-attaches to a job sent earlier (e.g. with `blocking=False`, from another process).
"""
from ..modeling.base import BACKENDS
from .client import JobHandle, RemoteBackend, job
from .loopback import LoopbackBackend

__all__ = ["JobHandle", "job"]

BACKENDS["remote"] = RemoteBackend
BACKENDS["local"] = LoopbackBackend
