"""nnglass: read, edit and save any activation and gradient of a PyTorch model."""
from __future__ import annotations

import builtins as _builtins
from typing import Any

__version__ = "0.1.0"

from .config import CONFIG  # noqa: E402
from .intervention.envoy import Envoy
from .intervention.interleaver import CausalityError
from .modeling.base import NNsight
from .modeling.language import LanguageModel
from .tracing import compile as _compile
from .tracing import contexts as _contexts
from .tracing.executor import ExecutionError
from .tracing.proxy import Proxy, TraceError

__all__ = [
    "NNsight", "LanguageModel", "Envoy", "CONFIG", "Proxy", "apply", "log", "save",
    "TraceError", "CausalityError", "ExecutionError",
    "bool", "bytes", "int", "float", "str", "complex", "bytearray", "tuple", "list", "set", "dict",
]


def apply(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn on proxies as one graph node (outside a trace: just call it)."""
    tracer = _contexts.current()
    if tracer is None:
        return fn(*args, **kwargs)
    return tracer.graph.proxy("call_function", fn, args, kwargs)


def _builtin(kind: type) -> Any:
    def make(*args: Any, **kwargs: Any) -> Any:
        tracer = _contexts.current()
        if tracer is None:
            return kind(*args, **kwargs)
        return tracer.graph.proxy("call_function", kind, args, kwargs)
    make.__name__ = kind.__name__
    make.__doc__ = f"A traceable {kind.__name__} (a graph node inside a trace or session)."
    return make


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
    tracer = _contexts.current()
    if tracer is None:
        _builtins.print(*values)
    else:
        tracer.log(*values)


def save(value: Any) -> Any:
    """Keep value after the trace (nnsight 0.5's `nnsight.save`): a proxy, or a list/dict/tuple holding proxies."""
    return _compile.save(value)
