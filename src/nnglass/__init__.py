"""nnglass: read, edit and save any activation and gradient of a PyTorch model."""
from __future__ import annotations

import builtins as _builtins
from typing import Any

from .intervention.envoy import Envoy
from .intervention.interleaver import CausalityError
from .modeling.base import NNsight
from .tracing import contexts as _contexts
from .tracing.executor import ExecutionError
from .tracing.proxy import Proxy, TraceError

__all__ = ["NNsight", "Envoy", "Proxy", "apply", "log", "TraceError", "CausalityError", "ExecutionError"]


def apply(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn on proxies as one graph node (outside a trace: just call it)."""
    tracer = _contexts.current()
    if tracer is None:
        return fn(*args, **kwargs)
    return tracer.graph.proxy("call_function", fn, args, kwargs)


def log(*values: Any) -> None:
    """Print values when the graph runs (outside a trace: print now)."""
    tracer = _contexts.current()
    if tracer is None:
        _builtins.print(*values)
    else:
        tracer.log(*values)
