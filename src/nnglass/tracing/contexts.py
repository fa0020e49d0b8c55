"""The tracing state of each thread, conditions, and the patching of torch factories and einops."""
from __future__ import annotations

import functools
import gc
import threading
from typing import Any, Callable

import einops
import torch

from .node import Node, map_nested
from .proxy import Proxy, TraceError

_local = threading.local()


def stack() -> list[Any]:
    """Open tracers (innermost last) of this thread."""
    tracers = getattr(_local, "tracers", None)
    if tracers is None:
        tracers = _local.tracers = []
    return tracers


def log(*values: Any) -> None:
    """Where `tracer.log(...)` goes: stdout, or this thread's handler (a server sends LOG lines)."""
    handler = getattr(_local, "log_handler", None)
    if handler is None:
        print(*values)
    else:
        handler(" ".join(str(v) for v in values))


def set_log_handler(handler: Callable[[str], None] | None) -> None:
    """Send this thread's log lines to handler (None: back to stdout)."""
    _local.log_handler = handler


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
        self.graph = self.graph.root.open
        self.outer = self.graph.guard
        self.graph.guard = self.graph.add("cond", None, (self.condition,))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.graph.guard = self.outer


class Iterator:
    """`with session.iter(iterable) as item:` — the body is recorded once and run per item."""

    def __init__(self, graph: Any, iterable: Any, return_context: bool = False) -> None:
        self.graph = graph
        self.iterable = iterable
        self.return_context = return_context
        self.body: Any = None
        self.outer: Any = None

    def __enter__(self) -> Any:
        root = self.graph.root
        self.outer = root.open
        self.body = type(self.graph)(parent=self.outer, sequential=True)
        self.body.owner = self
        self.outer.add("iter", self.body, (self.iterable,))
        root.open = self.body
        item = Proxy(self.body.add("item", None), self.body)
        return (item, self) if self.return_context else item

    def __exit__(self, *exc: Any) -> None:
        self.graph.root.open = self.outer
        self.outer = None

    def _recording(self) -> Any:
        if self.outer is None:
            raise TraceError("This loop's context can be used only inside its `with session.iter(...)` block.")
        return self.graph.root.open

    def exit(self) -> None:
        """Leave the loop (like `break`) when this point runs."""
        self._recording().add("exit", "loop")

    def log(self, *values: Any) -> None:
        """Print values when the loop body runs."""
        self._recording().add("log", None, values)

    def cond(self, condition: Any) -> Condition:
        """`with iterator.cond(c):` runs what is inside only if c holds."""
        return Condition(self._recording(), condition)


# -- functions that must become nodes while a trace is being built ----------------------------------
_FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "zeros", "ones", "full", "empty",
              "arange", "linspace", "logspace", "eye", "tensor", "as_tensor")
_EINOPS = ("rearrange", "reduce", "repeat", "einsum", "pack", "unpack")
_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")
_lock = threading.Lock()
_open = 0


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


def _first_proxy(value: Any) -> Proxy | None:
    found: list[Proxy] = []
    map_nested(value, lambda v: found.append(v) if isinstance(v, Proxy) and v.graph.building else None)
    return found[0] if found else None


def _on_proxies(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        proxy = _first_proxy((args, kwargs))
        if proxy is None:
            return original(*args, **kwargs)
        return proxy.graph.proxy("call_function", original, args, kwargs)
    return traced


_PARAMETER = torch.nn.Parameter


def _parameter_new(original: Callable[..., Any]) -> Callable[..., Any]:
    """Parameter.__new__ that makes a node when given a proxy (the class itself stays the same)."""
    def new(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
        proxy = _first_proxy(data)
        if proxy is None:
            return original(cls, data, requires_grad)
        return proxy.graph.proxy("call_function", _PARAMETER, (data,), {"requires_grad": requires_grad})
    return staticmethod(new)


@functools.cache
def _patches() -> list[tuple[Any, str, Any, Any]]:
    """(owner, name, original, traced) for everything patched while tracing; built once."""
    targets = ([(torch, name, _factory) for name in _FACTORIES]
               + [(einops, name, _on_proxies) for name in _EINOPS]
               + [(torch.optim, name, _on_proxies) for name in _OPTIMIZERS]
               + [(_PARAMETER, "__new__", _parameter_new)])
    patches = []
    for owner, name, wrap in targets:
        original = vars(owner)[name]  # raw, so a staticmethod is restored as one
        patches.append((owner, name, original, wrap(original)))
    return patches


def open_patches() -> None:
    """Patch factories, einops, optimizers and Parameter while any trace is open (in any thread)."""
    global _open
    with _lock:
        _open += 1
        if _open == 1:
            for owner, name, _, traced in _patches():
                setattr(owner, name, traced)


_paused = 0           # traces open or running, in all threads
_gc_was_enabled = False


def pause_gc() -> None:
    """No garbage collection while any trace is open or running (in any thread).

    A trace makes thousands of short-lived objects; a collection in the middle would push them
    into older generations and trigger full collections later. The trace frees them by reference
    counting at its end, so the collector has nothing to do.
    """
    global _paused, _gc_was_enabled
    with _lock:
        _paused += 1
        if _paused == 1:
            _gc_was_enabled = gc.isenabled()
            gc.disable()


def resume_gc() -> None:
    """Undo pause_gc once the last trace is done."""
    global _paused
    with _lock:
        _paused -= 1
        if _paused == 0 and _gc_was_enabled:
            gc.enable()



def close_patches() -> None:
    """Undo open_patches once the last open trace closes."""
    global _open
    with _lock:
        _open -= 1
        if _open == 0:
            for owner, name, original, _ in _patches():
                setattr(owner, name, original)
