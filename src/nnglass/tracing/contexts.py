"""The tracing state of each thread, conditions, and the patching of torch factories and einops."""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import einops
import torch

from .node import Node
from .proxy import Proxy

_local = threading.local()


def stack() -> list[Any]:
    """Open tracers (innermost last) of this thread."""
    tracers = getattr(_local, "tracers", None)
    if tracers is None:
        tracers = _local.tracers = []
    return tracers


def current() -> Any:
    """The innermost open tracer of this thread, or None."""
    tracers = stack()
    return tracers[-1] if tracers else None


class suspended:
    """Run real code inside a trace (scans, fake passes): nothing in it is recorded."""

    def __enter__(self) -> None:
        stack().append(None)

    def __exit__(self, *exc: Any) -> None:
        stack().pop()


class Condition:
    """`with tracer.cond(condition):` — the nodes made inside run only if condition holds."""

    def __init__(self, graph: Any, condition: Any) -> None:
        self.graph = graph
        self.condition = condition
        self.outer: Node | None = None

    def __enter__(self) -> Condition:
        self.outer = self.graph.guard
        self.graph.guard = self.graph.add("cond", None, (self.condition,))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.graph.guard = self.outer


# -- functions that must become nodes while a trace is being built ----------------------------------
_FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "zeros", "ones", "full", "empty",
              "arange", "linspace", "logspace", "eye", "tensor", "as_tensor")
_EINOPS = ("rearrange", "reduce", "repeat", "einsum", "pack", "unpack")
_lock = threading.Lock()
_open = 0
_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


def _building_graph() -> Any:
    tracer = current()
    return tracer.graph if tracer is not None and tracer.graph.building else None


def _factory(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        graph = _building_graph()
        if graph is None:
            return original(*args, **kwargs)
        return graph.proxy("call_function", original, args, kwargs)
    return traced


def _on_proxies(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, Proxy)), None)
        if proxy is None and args and isinstance(args[0], (list, tuple)):
            proxy = next((a for a in args[0] if isinstance(a, Proxy)), None)
        if proxy is None or not proxy.graph.building:
            return original(*args, **kwargs)
        return proxy.graph.proxy("call_function", original, args, kwargs)
    return traced


def _targets() -> list[tuple[Any, str, Callable[..., Any]]]:
    return [(torch, name, _factory) for name in _FACTORIES] + [(einops, name, _on_proxies) for name in _EINOPS]


def open_patches() -> None:
    """Patch factories and einops while at least one trace is open (in any thread)."""
    global _open
    with _lock:
        _open += 1
        if _open == 1:
            for owner, name, wrap in _targets():
                original = getattr(owner, name)
                _originals[(owner, name)] = original
                setattr(owner, name, wrap(original))


def close_patches() -> None:
    """Undo open_patches once the last open trace closes."""
    global _open
    with _lock:
        _open -= 1
        if _open == 0:
            for (owner, name), original in _originals.items():
                setattr(owner, name, original)
            _originals.clear()
