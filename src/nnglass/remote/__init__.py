"""Remote execution: the JSON wire format, the client backend, request and status schemas."""
from ..modeling.base import BACKENDS
from .client import RemoteBackend
from .loopback import LoopbackBackend

BACKENDS["remote"] = RemoteBackend
BACKENDS["local"] = LoopbackBackend
