"""Remote execution: the JSON wire format, the client backend, request and status schemas."""
from ..modeling.base import BACKENDS
from .client import RemoteBackend

BACKENDS["remote"] = RemoteBackend
