"""Tracer and Invoker: the `with model.trace(...)` context that records an intervention graph."""
from __future__ import annotations

from typing import Any

from ..tracing import compile, contexts
from ..tracing.contexts import Condition
from ..tracing.graph import Graph
from ..tracing.node import Node, map_nested
from ..tracing.proxy import Proxy, TraceError
from .cache import Cache, put
from .interleaver import ALL_CALLS, Interleaver
from .scan import Scan


class Invoker:
    """`with tracer.invoke(input):` — a batch slice; the nodes made inside see only its rows."""

    def __init__(self, tracer: Tracer, inputs: tuple, kwargs: dict) -> None:
        self.tracer = tracer
        self.raw = (inputs, kwargs)   # as the user gave them; may hold proxies inside a session
        self.prepared: tuple | None = None
        self.index: int | None = None
        self.outer: int | None = None

    @property
    def inputs(self) -> tuple[tuple, dict, int]:
        """The model args, kwargs and batch size of this invoke."""
        if self.prepared is None:
            inputs, kwargs = self.raw
            self.prepared = self.tracer.model._prepare_inputs(*inputs, **kwargs)
        return self.prepared

    def __enter__(self) -> Invoker:
        tracer = self.tracer
        if self.index is None:
            self.index = len(tracer.invokers)
            tracer.invokers.append(self)
        self.outer, tracer.graph.invoke = tracer.graph.invoke, self.index
        if tracer.scanning:
            tracer.scan.prepare(self.index)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tracer.graph.invoke = self.outer


class Tracer:
    """Records what the user writes on proxies; runs the model with the graph on exit."""

    def __init__(self, model: Any, inputs: tuple = (), kwargs: dict | None = None, *,
                 scan: bool = False, validate: bool = False, invoker_args: dict | None = None,
                 run: bool = True, method: str = "_execute", call_kwargs: dict | None = None,
                 remote: bool = False) -> None:
        self.model = model
        self.method = method                   # the model method that runs the batch
        self.call_kwargs = call_kwargs or {}   # keywords for that method (e.g. generation settings)
        outer = contexts.current()
        nested = outer is not None and outer.graph.building
        # inside a session (or loop) the trace is a subgraph that runs when its turn comes
        self.graph = Graph(parent=outer.graph.root.open) if nested else Graph()
        self.graph.owner = self
        self.outer_open: Graph | None = None
        self.invokers: list[Invoker] = []
        self.events: dict[tuple, Proxy] = {}   # (path, kind, call, invoke) -> latest proxy
        self.calls: dict[str, int] = {}        # module path -> call index addressed by .output
        self.grads: dict[tuple, Proxy] = {}    # (tensor node, backward scope) -> latest gradient proxy
        self.remote = remote                   # run on a server instead of here
        self.scanning = scan or validate
        self.run = run
        self.scan = Scan(self)
        self.output: Any = None
        self.invoker: Invoker | None = None
        if inputs or kwargs:
            self.invoker = Invoker(self, inputs, {**(invoker_args or {}), **(kwargs or {})})
        if validate:
            self.graph.on_add = self.scan.value
        for edit in getattr(model, "_edits", ()) if run else ():
            self.replay(edit)

    @classmethod
    def restore(cls, model: Any, graph: Graph, invokes: int, method: str, call_kwargs: dict) -> Tracer:
        """A tracer around a graph that arrived over the wire (inputs come at execute)."""
        tracer = cls.__new__(cls)
        tracer.model, tracer.graph, tracer.method, tracer.call_kwargs = model, graph, method, call_kwargs
        tracer.invokers = [Invoker(tracer, (), {}) for _ in range(invokes)]
        tracer.output, tracer.remote = None, False
        graph.owner = tracer
        return tracer

    # -- the context --------------------------------------------------------------------------------
    def __enter__(self) -> Tracer:
        contexts.stack().append(self)
        contexts.open_patches()
        contexts.pause_gc()
        root = self.graph.root
        self.outer_open, root.open = root.open, self.graph
        if self.invoker is not None:
            self.invoker.__enter__()
        compile.enter(self)  # native control flow: see tracing/compile.py
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return compile.exit(self, exc_type, exc, tb, self._close)

    def _close(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leave the context; run the graph unless the body failed."""
        if self.invoker is not None:
            self.invoker.__exit__()
        contexts.stack().pop()
        contexts.close_patches()
        root = self.graph.root
        root.open = self.outer_open
        try:
            if root is not self.graph:
                if exc_type is None and self.run:
                    root.open.add("trace", self, tuple(inv.raw for inv in self.invokers))
                return
            self.graph.close()
            if exc_type is None and self.run:
                self.execute()
                self.release()
        finally:
            contexts.resume_gc()

    def release(self) -> None:
        """Break the graph's reference cycles so that it is freed without the garbage collector.

        Saved proxies keep their values; the nodes keep op, target, args and value for inspection.
        """
        for node in self.graph.nodes:
            node.users = node.deps = []
            node.graph = None
        self.graph.owner = self.graph.on_add = None
        for invoker in self.invokers:
            invoker.tracer = None
        self.scan = None
        self.events.clear()
        self.grads.clear()

    def execute(self, raw: tuple | None = None) -> Any:
        """Run the model once over all invokes (given their inputs, inside a session)."""
        if raw is not None:
            for invoker, inputs in zip(self.invokers, raw):
                invoker.raw, invoker.prepared = inputs, None
        if not self.invokers:
            raise TraceError("Nothing to run: give the trace an input, or call `tracer.invoke(input)`.")
        if self.remote:
            from ..remote.client import execute_remote
            return execute_remote(self)
        args, kwargs, slices, size = self.model._batch([inv.inputs for inv in self.invokers])
        interleaver = Interleaver(self.graph, self.model._modules_by_path, slices, size)
        self.output = interleaver.run(getattr(self.model, self.method), *args, **{**kwargs, **self.call_kwargs})
        return self.output

    def inputs_of(self, invoke: int | None) -> tuple[tuple, dict]:
        """The prepared model inputs of one invoke (or of all of them batched)."""
        if invoke is None:
            args, kwargs, _, _ = self.model._batch([inv.inputs for inv in self.invokers])
            return args, kwargs
        args, kwargs, _ = self.invokers[invoke].inputs
        return args, kwargs

    def replay(self, edit: Graph) -> None:
        """Copy an edit's nodes into this trace (they apply to the whole batch)."""
        copies: dict = {}
        remap = lambda v: copies.get(v, v) if type(v) is Node else v  # noqa: E731
        for node in edit.nodes:
            new = self.graph.add(node.op, node.target, map_nested(node.args, remap),
                                 map_nested(node.kwargs, remap), guarded=False)
            new.where = node.where
            copies[node] = new

    # -- what the user calls on the tracer ------------------------------------------------------------
    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """A new batch slice for these inputs."""
        return Invoker(self, inputs, kwargs)

    def stop(self) -> None:
        """Stop the model once every node defined above has run."""
        node = self.graph.add("stop", "barrier")
        for earlier in self.graph.nodes[:-1]:
            if earlier not in node.deps:
                self.graph.depend(node, earlier)

    def log(self, *values: Any) -> None:
        """Print values when the graph runs."""
        self.graph.add("log", None, values)

    def cond(self, condition: Any) -> Condition:
        """`with tracer.cond(c):` runs the nodes made inside only if c holds."""
        return Condition(self.graph, condition)

    def cache(self, modules: Any = None, include_inputs: bool = False) -> Proxy:
        """A dict of module outputs (and inputs), keyed by original module path, filled as they run."""
        envoys = self.model._envoys() if modules is None else modules
        store = self.graph.proxy("call_function", Cache, ())
        for envoy in envoys:
            path = envoy if isinstance(envoy, str) else envoy._path
            self.graph.add("call_function", put, (store, path, "output", self.event(path, "output")))
            if include_inputs:
                self.graph.add("call_function", put, (store, path, "inputs", self.event(path, "inputs")))
        return store

    def apply(self, fn: Any, *args: Any, **kwargs: Any) -> Proxy:
        """Add a call of any function to the graph."""
        return self.graph.proxy("call_function", fn, args, kwargs)

    # -- module events (used by Envoy) ----------------------------------------------------------------
    def event(self, path: str, kind: str) -> Proxy:
        """The latest proxy of a module's `output`, `inputs` or `input` at the current call and invoke."""
        call = self.calls.get(path, 0)
        key = (path, kind, call, self.graph.invoke)
        proxy = self.events.get(key)
        if proxy is None:
            if kind == "input":
                inputs = self.event(path, "inputs")
                proxy = Proxy(self.graph.add("input", None, (inputs,), guarded=False), self.graph)
            else:
                proxy = Proxy(self.graph.add(kind, path, (call,), guarded=False), self.graph)
            self.events[key] = proxy
        return proxy

    def set_event(self, path: str, kind: str, value: Any) -> None:
        """`envoy.output = value` (or input/inputs): swap what the model gets."""
        first = kind == "input"
        if first:
            kind = "inputs"
        call = self.calls.get(path, 0)
        latest = self.swap(self.event(path, kind), value, first)
        self.events[(path, kind, call, self.graph.invoke)] = latest
        self.events.pop((path, "input", call, self.graph.invoke), None)

    def next_call(self, path: str, step: int) -> None:
        call = self.calls.get(path, 0)
        self.calls[path] = step if call == ALL_CALLS else call + step

    def all_calls(self, path: str) -> None:
        self.calls[path] = ALL_CALLS

    # -- gradients (used by Proxy) --------------------------------------------------------------------
    def grad_of(self, proxy: Proxy) -> Proxy:
        scope = self.graph.backward
        key = (proxy.node, scope)
        grad = self.grads.get(key)
        if grad is None:
            kwargs = {"backward": scope.index} if scope is not None else None
            grad = self.grads[key] = self.graph.proxy("grad", None, (proxy,), kwargs)
        return grad

    def set_grad(self, proxy: Proxy, value: Any) -> None:
        self.grads[(proxy.node, self.graph.backward)] = self.swap(self.grad_of(proxy), value)

    def swap(self, latest: Proxy, value: Any, first: bool = False) -> Proxy:
        """Replace the value of an event (module output/inputs, gradient); return its new latest proxy."""
        node = latest.node
        event = node.args[0] if node.op == "current" else node  # swaps are keyed by the event itself
        swap = self.graph.add("swap", None, (event, value), {"first": True} if first else None)
        return Proxy(self.graph.add("current", None, (event, swap), guarded=False), self.graph)

    # -- fake values (used by Proxy) ------------------------------------------------------------------
    def fake(self, node: Node) -> Any:
        return self.scan.value(node)

