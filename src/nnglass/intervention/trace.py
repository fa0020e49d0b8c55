"""Trace and Invoker: the `with model.trace(...)` recorder, its batch slices and module events."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from ..tracing.contexts import Condition
from ..tracing.errors import NothingToRun, TraceError
from ..tracing.graph import Graph
from ..tracing.node import Node
from ..tracing.proxy import Proxy
from ..tracing.tracer import Tracer
from ..tracing.walk import leaves, map_leaves
from .backend import Backend, LocalBackend
from .cache import Cache, aliases_of, put, resolve
from .fake import Fake
from .interleaver import ALL_CALLS
from .skips import Skips

__all__ = ["Trace", "Invoker", "Barrier", "Steps", "StepLoop", "AllSteps"]


def _enclosing(path: str) -> Iterator[str]:
    """The path and every module path above it, up to the model ("")."""
    while path:
        yield path
        path = path.rpartition(".")[0]
    yield ""


class Invoker:
    """`with tracer.invoke(input):` — a batch slice; the nodes made inside see only its rows."""

    def __init__(self, trace: Trace, inputs: tuple, kwargs: dict) -> None:
        self.trace = trace
        self.scan = kwargs.pop("scan", False)  # the invoke's own option (0.4): scan its input at once
        self.raw = (inputs, kwargs)   # as the user gave them; may hold proxies
        self.index: int | None = None
        self._prepared: tuple | None = None
        self._scope: Any = None

    @property
    def inputs(self) -> tuple[tuple, dict]:
        """This invoke's inputs as nnsight 0.4 shows them: (args, kwargs); a LanguageModel's `((BatchEncoding,), {})`."""
        return self.trace.model._invoker_inputs(self.prepared)

    @property
    def prepared(self) -> tuple[tuple, dict, int]:
        """The model args, kwargs and batch size of this invoke."""
        if self._prepared is None:
            if any(isinstance(leaf, Proxy) for leaf in leaves(self.raw)):
                raise TraceError("This invoke's input is a value of the trace: it exists only when the trace runs.")
            self._prepared = self.trace.model._prepare_inputs(*self.raw[0], **self.raw[1])
        return self._prepared

    def __enter__(self) -> Invoker:
        trace = self.trace
        if trace.current_invoke is not None:
            raise TraceError("Invokes cannot be nested: close one `with tracer.invoke(...)` before opening the next.")
        if self.index is None and self.raw != ((), {}):
            self.index = len(trace.invokers)
            trace.invokers.append(self)
            trace.create("invoke", self.index, self.raw, guarded=False)
        trace.scanning = trace.scanning or self.scan
        self._scope = trace.scope(current_invoke=self.index)  # an empty invoke: the whole batch (None)
        self._scope.__enter__()
        if trace.scanning and self.index is not None:
            trace.fake().prepare_invoke(self.index)
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None and self.trace.deferred:
            self.trace.flush_swaps()
        self._scope.__exit__(kind, *exc)


class Barrier:
    """nnsight 0.5's invoke barrier: calling it is a no-op, since a value may cross invokes anyway."""

    def __init__(self, participants: int) -> None:
        self.participants = participants

    def __call__(self) -> None:
        """Wait for the other invokes (nothing to wait for: nodes run once their inputs exist)."""


class Steps:
    """`tracer.iter[...]`: the generation steps a plain Python loop runs its body for, while recording.

    An open end (`[:]`, `[2:]`) stops at the most steps the run may take: the values of a step the run
    never reaches (generation ended early) drop out of saved lists, and the code after the loop runs.
    """

    def __init__(self, trace: Trace, path: str | None = None) -> None:
        self.trace = trace
        self.path = path  # one module's calls (`envoy.iter[...]`) instead of every module's

    def __getitem__(self, which: int | slice | list[int]) -> StepLoop:
        if isinstance(which, slice):  # a bounded slice goes to its stop (a module may run several times)
            open_end = which.stop is None or which.stop < 0
            steps = range(*which.indices(self.trace.steps() if open_end else which.stop))
            return StepLoop(self, steps, which.stop is None, which == slice(None))
        return StepLoop(self, [which] if isinstance(which, int) else list(which), False, False)

    def run(self, indices: Any, open_end: bool) -> Iterator[int]:
        """Record the loop body once per step index, with every module (or the one at path) at that step."""
        graph = self.trace.graph
        for count, index in enumerate(indices):
            start = len(graph.nodes)
            with self.trace.at_step(index, self.path):
                yield index
            if open_end and count:
                self.trace.open_steps.append(range(start, len(graph.nodes)))


class StepLoop:
    """`tracer.iter[...]`: a loop over the steps (nnsight 0.5), or for `[:]` a `with` block applying at
    every step (as nnsight 0.4's `with tracer.iter[:]:`)."""

    def __init__(self, steps: Steps, indices: Any, open_end: bool, every: bool) -> None:
        self.steps, self.indices, self.open_end, self.every = steps, indices, open_end, every
        self.scope: Any = None

    def __iter__(self) -> Iterator[int]:
        return self.steps.run(self.indices, self.open_end)

    def block_steps(self) -> Iterator[int] | None:
        """As a `with` block in a compiled body: its body is recorded once per step, as this loop would."""
        return iter(self)

    def __enter__(self) -> None:
        if not self.every or self.steps.path is not None:
            raise TraceError("As a `with` block, `tracer.iter[:]` applies at every step; for some steps, "
                             "loop over them: `for step in tracer.iter[1:3]:`.")
        self.scope = AllSteps(self.steps.trace)
        self.scope.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.scope.__exit__(*exc)


class AllSteps:
    """`tracer.all()`: a context whose body applies at every step (nnsight 0.4), or a loop over every step
    like `tracer.iter[:]` (nnsight 0.5)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.scopes: list[contextlib.AbstractContextManager] = []

    def __enter__(self) -> None:
        self.scopes.append(self.trace.at_step(ALL_CALLS))
        self.scopes[-1].__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.scopes.pop().__exit__(*exc)

    def __iter__(self) -> Iterator[int]:
        return iter(Steps(self.trace)[:])

    def block_steps(self) -> Iterator[int] | None:
        """As a `with` block in a compiled body of `generate`: its body is recorded once per step, as
        `tracer.iter[:]`; of a forward, None: the body applies to every call of each module."""
        return iter(self) if self.trace.method == "generate" else None


class Trace(Tracer):
    """Records what the user writes on a model's proxies; runs the model with the graph at the end."""

    kind = "trace"
    nests = True

    def __init__(self, model: Any, inputs: tuple = (), kwargs: dict | None = None, *,
                 scan: bool = False, validate: bool = False, invoker_args: dict | None = None,
                 run: bool = True, method: str = "forward", call_kwargs: dict | None = None,
                 backend: Backend | None = None) -> None:
        super().__init__()
        self.model = model
        self.method = method                   # the model method that runs the batch
        self.call_kwargs = call_kwargs or {}   # keywords for that method (e.g. generation settings)
        self.backend = backend or LocalBackend()
        self.invokers: list[Invoker] = []
        self.events: dict[tuple, Proxy] = {}   # (path, kind, call, invoke) -> latest proxy
        self.calls: dict[tuple, int] = {}      # (path, invoke) -> call index addressed by .output
        self.grads: dict[tuple, Proxy] = {}    # (tensor node, backward pass) -> latest gradient proxy
        self.open_steps: list[range] = []      # node indices of open-ended steps the run may not reach
        self.step: int | None = None           # the call every module is at (a step loop, `tracer.next()`)
        self.everywhere: list[str] = []        # module paths of open `with envoy.all():` blocks
        self.deferred: list[tuple] = []        # eproperty transforms waiting for the user's edits of a view
        self.caching: list[tuple] = []         # `tracer.cache()` entries to fill once the edits are recorded
        self.skips = Skips()                   # unconditional skips, to refuse reads inside skipped modules
        self.reached: dict[int | None, Proxy] = {}  # invoke -> the module value it addressed last
        self.scanning = scan or validate
        self.validate = validate
        self.runs = run
        self._fake: Fake | None = None
        self.invoker: Invoker | None = None
        if inputs or kwargs:
            self.invoker = Invoker(self, inputs, {**(invoker_args or {}), **(kwargs or {})})

    def meta(self) -> dict:
        return {"model": getattr(self.model, "_remote_name", None), "method": self.method,
                "call_kwargs": self.call_kwargs}

    def begin(self) -> None:
        self.experiment.owners[self.graph.id] = self
        self.inherit(self.experiment.owners.get(0))
        if self.validate:
            self.checker = lambda node: self.fake().value(node)
        for edit in getattr(self.model, "_edits", ()) if self.runs else ():
            self.replay(edit)
        if self.invoker is not None:
            self.invoker.__enter__()

    def end(self) -> None:
        if self.invoker is not None:
            self.invoker.__exit__(None, None, None)
        if not self.runs:
            if self.scanning:  # `model.scan(...)`: saved values are fakes, their shapes readable after the block
                self.experiment.results.update(self.fake().saved())
                if self.invokers:  # and every module's, at its first call, as `envoy.output.shape` (nnsight)
                    self.model._scanned = self.fake().prepare_invoke(None)
            return
        if not self.invokers:
            raise NothingToRun("Nothing to run: give the trace an input, or call `tracer.invoke(input)`.")
        if self.parent is None:
            self.backend.run(self)

    def inherit(self, session: Any) -> None:
        """Take `model.session(scan=..., validate=...)` options from the enclosing session."""
        if session is not self and getattr(session, "kind", None) == "session":
            self.validate = self.validate or session.validate
            self.scanning = self.scanning or session.scan

    @property
    def holds_traces(self) -> bool:
        return False

    def inputs_of(self, invoke: int | None) -> tuple[tuple, dict]:
        """The prepared model inputs of one invoke (or of all of them batched)."""
        if invoke is None:
            args, kwargs, _, _ = self.model._batch([inv.prepared for inv in self.invokers])
            return args, kwargs
        args, kwargs, _ = self.invokers[invoke].prepared
        return args, kwargs

    def replay(self, edit: Graph) -> None:
        """Copy an edit's nodes into this trace (they apply to the whole batch, at every call)."""
        copies: dict[Node, Node] = {}
        remap = lambda v: copies.get(v, v) if type(v) is Node else v  # noqa: E731
        for node in edit.nodes:
            copy = self.graph.create_node(node.op, node.target, map_leaves(node.args, remap),
                                          map_leaves(node.kwargs, remap), [copies[d] for d in node.deps],
                                          None, node.where, None)
            copy.saved = node.saved
            copies[node] = copy

    def fake(self) -> Fake:
        """The fake-value evaluator of this trace (made on first need)."""
        if self._fake is None:
            self._fake = Fake(self)
        return self._fake

    def describe(self, node: Node, name: str) -> Any:
        """An attribute (shape, dtype, ...) of a node's fake value; another trace's node: from that trace."""
        if node.graph is not self.graph:
            return super().describe(node, name)
        return getattr(self.fake().value(node), name)

    # -- what the user calls on the tracer ------------------------------------------------------------
    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """A new batch slice for these inputs."""
        return Invoker(self, inputs, kwargs)

    def stop(self) -> None:
        """Stop the model once every node defined above has run."""
        self.fill_caches()  # what a cache holds is read before the stop
        node = self.create("stop", "barrier")
        for earlier in self.graph.nodes[:-1]:
            self.graph.depend(node, earlier)

    def barrier(self, participants: int) -> Barrier:
        """`tracer.barrier(n)`: accepted for nnsight 0.5 code; the graph already runs in dataflow order."""
        return Barrier(participants)

    @property
    def iter(self) -> Steps:
        """`for step in tracer.iter[1:3]:` (or `[:]`, `[[0, 2]]`): the body addresses every module at each step."""
        return Steps(self)

    def all(self) -> AllSteps:
        """Every step: `with tracer.all():` (the body re-runs on each module call) or `for step in tracer.all():`."""
        return AllSteps(self)

    def next(self, step: int = 1) -> Trace:
        """Address every module at the following step (generation)."""
        current = self.first_call if self.step is None else self.step
        self.step = step if current == ALL_CALLS else current + step
        self.calls.clear()
        return self

    def at_step(self, step: int, path: str | None = None) -> contextlib.AbstractContextManager:
        """Recording state where every module (or the one at path) is at call `step`; what the block reads
        does not move where a later `tracer.cache()` starts (the loop's steps run before and after it)."""
        if path is not None:
            return self.scope(calls={**self.calls, (path, self.current_invoke): step}, reached={**self.reached})
        return self.scope(step=step, calls={}, reached={**self.reached})

    def unreached(self, node: Node) -> bool:
        """Whether node belongs to a step of an open-ended step loop that the run never reached."""
        return (node.graph is self.graph and node not in self.experiment.results
                and any(node.index in steps for steps in self.open_steps))

    def steps(self) -> int:
        """How many steps the run may take at most (forward passes of `generate`; one for a trace)."""
        if self.method != "generate":
            return 1
        config = getattr(self.model._model, "generation_config", None)
        return (self.call_kwargs.get("max_new_tokens") or getattr(config, "max_new_tokens", None)
                or self.call_kwargs.get("max_length") or getattr(config, "max_length", None) or 1)

    def log(self, *values: Any) -> None:
        """Print values when the graph runs."""
        self.create("log", None, values)

    def cond(self, condition: Any) -> Condition:
        """`with tracer.cond(c):` runs the nodes made inside only if c holds."""
        return Condition(self, condition)

    def cache(self, modules: Any = None, include_inputs: bool = False, include_output: bool = True,
              device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None,
              detach: bool = True) -> Proxy:
        """A dict of module outputs (and inputs), keyed by envoy path, filled as they run (saved).

        Values are detached, as `dtype`, on `device`; in `generate` a module's entry is a list, one Entry per step.
        Modules are envoys or paths (also by alias, or with nnsight's root `model.`). As in nnsight, an entry
        holds the value after the block's edits (the entries are recorded at the block's end, or a stop). Asked
        for after the invoke addressed a module value, it holds what runs from that value on (as nnsight).
        """
        envoys = self.model._envoys() if modules is None else modules
        paths = [self.module_path(e) for e in envoys]
        store = self.proxy("call_function", Cache, (tuple(self.model._modules_by_path), aliases_of(self.model),
                                                    None if device is None else str(device), dtype, detach))
        kinds = ("output",) * include_output + ("inputs",) * include_inputs
        reached = self.reached.get(self.current_invoke)
        start = None if reached is None or reached.node.graph is not self.graph else self.fired(reached.node)
        with self.at_step(ALL_CALLS) if self.method == "generate" else contextlib.nullcontext():
            self.caching += [(store, path, kind, self.call_of(path), self.current_invoke, start)
                             for path in paths for kind in kinds]
        return store.save()

    def fill_caches(self) -> None:
        """Record the puts of the caches asked for, each reading the module's value after the edits so far."""
        if self.caching and self.deferred:
            self.flush_swaps()
        while self.caching:
            store, path, kind, call, invoke, start = self.caching.pop(0)
            with self.scope(current_invoke=invoke, guard=None):
                value = self.latest(path, kind, call)
                after = () if start is None else (Proxy(self.fired(value.node, start), self.experiment),)
                self.create("call_function", put, (store, path, kind, value, *after))

    def fired(self, trigger: Node, *marks: Node) -> Node:
        """A node that runs once trigger has run: whether the marks (nodes of this kind) had run by then."""
        return self.graph.create_node("fired", None, marks, None, [trigger], (), None, self.current_invoke)

    def module_path(self, module: Any) -> str:
        """An envoy's path; of a path string (which may use aliases or nnsight's root `model.`): the original."""
        if not isinstance(module, str):
            return module._path
        return self.model.get(resolve(module, self.model._modules_by_path, aliases_of(self.model)))._path

    @property
    def result(self) -> Proxy:
        """The output of the run: the model's output (for `generate`: the generated ids)."""
        return self.event("generator" if self.method == "generate" else "", "output")

    def apply(self, fn: Any, *args: Any, **kwargs: Any) -> Proxy:
        """Add a call of any function to the graph."""
        return self.proxy("call_function", fn, args, kwargs)

    # -- module events (used by Envoy) ----------------------------------------------------------------
    def event(self, path: str, kind: str) -> Proxy:
        """The latest proxy of a module's `output`, `inputs` or `input`; inside a condition, a read guarded by it."""
        if self.deferred:
            self.flush_swaps()
        if self.skips:
            self.skips.check(path, self.call_of(path), self.current_invoke)
        latest = self.reached[self.current_invoke] = self.latest(path, kind)
        if self.guard is None:
            return latest
        return Proxy(self.create("current", None, (latest,)), self.experiment)  # skipped when the guard is false

    def latest(self, path: str, kind: str, call: int | None = None) -> Proxy:
        """The latest proxy of a module's `output`, `inputs` or `input` at a call (the current one) in the
        current invoke."""
        call = self.call_of(path) if call is None else call
        key = (path, kind, call, self.current_invoke)
        proxy = self.events.get(key)
        if proxy is None:
            if kind == "input":
                inputs = self.latest(path, "inputs", call)
                proxy = Proxy(self.create("input", None, (inputs,), guarded=False), self.experiment)
            else:
                proxy = Proxy(self.create(kind, path, (call,), guarded=False), self.experiment)
            self.events[key] = proxy
        return proxy

    first_call = 0  # the call `.output` addresses before any `.next()` (an edit: every call)

    def set_event(self, path: str, kind: str, value: Any) -> None:
        """`envoy.output = value` (or input/inputs): swap what the model gets."""
        first = kind == "input"
        kind = "inputs" if first else kind
        if self.skips:
            self.skips.check(path, self.call_of(path), self.current_invoke)
        self.latest(path, kind)  # made now if it was never read
        self.swap_event(path, kind, self.call_of(path), value, first)
        self.reached[self.current_invoke] = self.latest(path, kind)

    def swap_event(self, path: str, kind: str, call: int, value: Any, first: bool = False) -> None:
        """Swap what the model gets at one (read) call of a module, in the current invoke; later reads see value."""
        key = (path, kind, call, self.current_invoke)
        self.events[key] = self.swap(self.events[key], value, first)
        self.events.pop((path, "input", call, self.current_invoke), None)

    def defer_swap(self, path: str, kind: str, make: Callable[[], Any]) -> None:
        """Swap make() into a module value once the user's edits of a view of it are recorded (an eproperty's
        transform): at the next module value read, the end of the invoke, or the end of the block."""
        self.deferred.append((path, kind, self.call_of(path), self.current_invoke, make))

    def flush_swaps(self) -> None:
        """Record the deferred swaps, each in the invoke it was asked in."""
        while self.deferred:
            path, kind, call, invoke, make = self.deferred.pop(0)
            with self.scope(current_invoke=invoke):
                self.swap_event(path, kind, call, make())

    def finish(self) -> None:
        self.fill_caches()
        if self.deferred:
            self.flush_swaps()

    def skip(self, path: str, value: Any) -> None:
        """`envoy.skip(value)`: the module does not run at the addressed call; value is its output."""
        call = self.call_of(path)
        node = self.create("skip_module", path, (call, value))
        if self.guard is None:
            self.skips.add(path, call, self.current_invoke, node, self.events)

    def next_call(self, path: str, step: int) -> None:
        call = self.call_of(path)
        self.calls[(path, self.current_invoke)] = step if call == ALL_CALLS else call + step

    def all_calls(self, path: str) -> None:
        """Address every call of the module and of the modules inside it (at the current invoke)."""
        self.calls[(path, self.current_invoke)] = ALL_CALLS

    def call_of(self, path: str) -> int:
        """The call a module's `.output` addresses: its own, else ALL under an `.all()`, else the trace's step or the first."""
        invoke = self.current_invoke
        call = self.calls.get((path, invoke))
        if call is not None:
            return call
        for outer in _enclosing(path):
            if outer in self.everywhere or self.calls.get((outer, invoke)) == ALL_CALLS:
                return ALL_CALLS
        return self.first_call if self.step is None else self.step

    @contextlib.contextmanager
    def all_scope(self, path: str) -> Iterator[None]:
        """`with envoy.all():` every call of the module and its children, in every invoke opened inside."""
        self.everywhere.append(path)
        try:
            yield
        finally:
            self.everywhere.remove(path)

    def parameter(self, path: str, name: str) -> Proxy:
        """A module's parameter or buffer (`model.layer.weight`); in-place edits are undone after the run."""
        return self.proxy("parameter", path, (name,))

    # -- gradients (used by Proxy) --------------------------------------------------------------------
    def grad_of(self, proxy: Proxy) -> Proxy:
        scope = self.backward
        key = (proxy.node, scope)
        grad = self.grads.get(key)
        if grad is None:
            kwargs = {"backward": scope.index} if scope is not None else None
            grad = self.grads[key] = self.proxy("grad", None, (proxy,), kwargs)
        return grad

    def backward_recorded(self, node: Node) -> None:
        """`loss.backward()`: the `.grad` reads and edits made outside any pass since the last one belong to it (0.4)."""
        for key in [key for key in self.grads if key[1] is None]:
            grad = self.grads.pop(key).node
            if grad.op == "current":  # an edited gradient: the grad node is the event it swaps
                grad = grad.args[0]
            grad.kwargs = {"backward": node.index}

    def set_grad(self, proxy: Proxy, value: Any) -> None:
        self.grads[(proxy.node, self.backward)] = self.swap(self.grad_of(proxy), value)

    def swap(self, latest: Proxy, value: Any, first: bool = False) -> Proxy:
        """Replace the value of an event (module output/inputs, gradient); return its new latest proxy."""
        node = latest.node
        event = node.args[0] if node.op == "current" else node  # swaps are keyed by the event itself
        swap = self.create("swap", None, (Proxy(event, self.experiment), value), {"first": True} if first else None)
        return Proxy(self.create("current", None, (Proxy(event, self.experiment), Proxy(swap, self.experiment)),
                                 guarded=False), self.experiment)
