"""nnglass: read, edit and save any activation and gradient of a PyTorch model."""
from __future__ import annotations

import builtins as _builtins
from typing import Any

__version__ = "0.1.0"

from .config import CONFIG  # noqa: E402
from .intervention.envoy import Envoy
from .intervention.interleaver import CausalityError
from .intervention.session import Session
from .intervention.skips import SkippedModuleError
from .intervention.trace import Trace as Tracer
from .modeling.base import NNsight
from .modeling.language import LanguageModel
from .tracing import compile as _compile
from .tracing.errors import ExecutionError, TraceError
from .tracing.local import current as _current
from .tracing.proxy import Proxy
from . import remote as _remote  # noqa: F401  (registers the remote backend)
from .remote.client import RemoteError
from . import util  # noqa: F401  (nnsight 0.4's `nnsight.util.apply`)

__all__ = [
    "NNsight", "LanguageModel", "StandardizedTransformer", "Envoy", "Session", "Tracer", "CONFIG",
    "Proxy", "apply", "log", "save", "TraceError", "CausalityError", "SkippedModuleError",
    "ExecutionError", "RemoteError",
]


def __getattr__(name: str) -> Any:
    if name == "StandardizedTransformer":  # imported on first use: it pulls in transformers
        from .modeling.standard import StandardizedTransformer
        return StandardizedTransformer
    raise AttributeError(f"module 'nnglass' has no attribute '{name}'")


def apply(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn on proxies as one graph node (outside a trace: just call it)."""
    recorder = _current()
    if recorder is None:
        return fn(*args, **kwargs)
    return recorder.proxy("call_function", fn, args, kwargs)


def save(value: Any) -> Any:
    """Keep value after the trace (nnsight 0.5's `nnsight.save`): a proxy, or a list/dict/tuple holding proxies."""
    return _compile.save(value)


def _builtin(kind: type) -> Any:
    def make(*args: Any, **kwargs: Any) -> Any:
        recorder = _current()
        if recorder is None:
            return kind(*args, **kwargs)
        return recorder.proxy("call_function", kind, args, kwargs)
    make.__name__ = kind.__name__
    make.__doc__ = f"A traceable {kind.__name__} (a graph node inside a trace or session)."
    return make


# Traceable builtins: `nnglass.list()` etc. Attributes only, out of __all__, so `import *` shadows nothing.
bool = _builtin(_builtins.bool)
bytes = _builtin(_builtins.bytes)
int = _builtin(_builtins.int)
float = _builtin(_builtins.float)
str = _builtin(_builtins.str)
complex = _builtin(_builtins.complex)
bytearray = _builtin(_builtins.bytearray)
tuple = _builtin(_builtins.tuple)
list = _builtin(_builtins.list)
set = _builtin(_builtins.set)
dict = _builtin(_builtins.dict)


def log(*values: Any) -> None:
    """Print values when the graph runs (outside a trace: print now)."""
    recorder = _current()
    if recorder is None:
        _builtins.print(*values)
    else:
        recorder.log(*values)
