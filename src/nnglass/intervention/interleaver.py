"""Interleaver: runs a trace's graph alongside a model's forward (and backward) pass."""
from __future__ import annotations

import heapq
import operator
import threading
from typing import Any, Callable

import torch

from ..tracing.errors import EarlyStop, TraceError
from ..tracing.graph import Graph
from ..tracing.interpreter import WAIT, Interpreter, Run
from ..tracing.node import Node, describe_line
from ..tracing.walk import map_leaves, zip_leaves
from . import source

__all__ = ["Interleaver", "CausalityError", "ALL_CALLS", "EVENTS", "first_input"]

EVENTS = ("output", "inputs")
ALL_CALLS = -1
_VIEWS = {"view", "reshape", "transpose", "permute", "narrow", "select", "squeeze", "unsqueeze",
          "flatten", "unflatten", "expand", "t", "view_as", "chunk", "split", "unbind", "diagonal"}
_INPLACE_OPS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
                operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}


class CausalityError(RuntimeError):
    """An edit of a module needs a value the model produces only later."""


class SharedValueError(TraceError):
    """In a forward shared by several users' jobs, a job used or replaced a value that is not its own rows."""


_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)


class Withheld:
    """What a job of a shared forward gets for a value that is not batched (a cache, a tensor of other shape).

    Such a value may hold other jobs' rows, or be one object all jobs would edit: any use raises, and the
    server then runs each job of the group alone (where the value is the job's own).
    """

    __slots__ = ()

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise SharedValueError("This value is shared by the jobs of a batched forward (it is not one job's "
                               "rows), so it cannot be used there.")

    __getattr__ = __bool__ = __iter__ = __len__ = __getitem__ = __setitem__ = __call__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __matmul__ = _refuse

    @classmethod
    def __torch_function__(cls, *_: Any, **__: Any) -> Any:
        return WITHHELD._refuse()

    def __repr__(self) -> str:
        return "<withheld: shared by the jobs of a batched forward>"


WITHHELD = Withheld()


def first_input(inputs: tuple[tuple, dict]) -> Any:
    """A module's first positional argument, else its first keyword argument."""
    args, kwargs = inputs
    return args[0] if args else next(iter(kwargs.values()))


class Batch:
    """Where each invoke's rows are: (start, size) per invoke in a batch of `size` rows.

    A tensor whose first dimension is the batch times one of `factors` (beams, return sequences)
    holds each row's copies next to each other, so an invoke's rows scale with the factor.
    """

    def __init__(self, slices: list[tuple[int, int]], size: int, factors: frozenset[int] = frozenset({1})) -> None:
        self.slices = slices
        self.size = size
        self.factors = factors
        self.whole = len(slices) == 1 and slices[0] == (0, size) and factors == {1}

    def rows(self, value: Any, invoke: int) -> tuple[int, int] | None:
        """(start, stop) of an invoke's rows in value, or None when value is not batched."""
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or self.size == 0:
            return None
        factor, rest = divmod(value.shape[0], self.size)
        if rest or factor not in self.factors:
            return None
        start, size = self.slices[invoke]
        return start * factor, (start + size) * factor


class Interleaver(Interpreter):
    """Hooks on the modules the graph references hand activations to its event nodes."""

    external = frozenset({*EVENTS, "item"})
    neutral = frozenset({"swap"})  # a swap in a false condition: later reads see the value unchanged

    def __init__(self, graph: Graph, run: Run, modules: dict[str, torch.nn.Module], env: dict | None = None) -> None:
        super().__init__(graph, run, env)
        self.modules = modules
        self.batch = Batch([], 0)
        self.thread = threading.get_ident()
        self.events: dict[tuple[str, str], list[Node]] = {}
        self.edits: dict[Node, list[Node]] = {}
        self.calls: dict[tuple[str, str], int] = {}
        self.swaps: dict[Node, Any] = {}
        self.sources: dict[int, tuple[Any, torch.Tensor, int, int]] = {}  # id(slice) -> (slice, full, start, stop)
        self.handles: list[Any] = []
        self.closures: dict[Node, list[Node]] = {}
        self.given: set[Node] = set()
        self.invokes: list[Node] = []
        self.backward_pass: int | None = None  # index of the backward node now running
        self.busy = False             # the graph itself is calling a module: hooks stand aside
        self.skips: dict[str, list[Node]] = {}   # module path -> its `envoy.skip(value)` nodes
        self.originals: list[tuple[torch.Tensor, torch.Tensor]] = []  # (edited parameter, its value before)
        self.shared = bool(graph.meta.get("shared"))  # invokes are different users' jobs: nothing else is theirs

    # -- running -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Index events and edits, queue what waits for nothing, run what needs no model value."""
        self.index()
        self.start()
        self.drain()

    def invoke_inputs(self) -> list[tuple[tuple, dict]]:
        """Each invoke's (args, kwargs), in invoke order; they must not need a value of this forward."""
        invokes = self.invokes  # in definition order, which is invoke order
        missing = [n for n in invokes if n not in self.env]
        if missing:
            raise TraceError(f"The input of an invoke needs a value that exists only once the model runs: "
                             f"{describe_line(missing[0].where)}")
        return [self.env[n] for n in invokes]

    def run_forward(self, batch: Batch, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Install hooks, run forward, always remove the hooks again."""
        self.batch = batch
        self.install()
        try:
            if not self.stop_requested:
                try:
                    forward(*args, **kwargs)
                except EarlyStop:
                    pass
            self.drain()
        finally:
            for handle in reversed(self.handles):  # last in, first out: stacked forwards unwind
                handle.remove()
            self.handles.clear()
            self.sources.clear()
            self.restore_parameters()

    def index(self) -> None:
        """Group event nodes by (module, kind) and edits by the event they change."""
        for node in self.graph.nodes:
            op = node.op
            if op == "call_function" and node.target not in _INPLACE_OPS:
                continue  # the common case: not an event, not an edit
            if op in EVENTS:
                source.ensure(self.modules, node.target)
                if node.target not in self.modules:
                    raise TraceError(f"The model has no module '{node.target}' ({describe_line(node.where)}).")
                self.events.setdefault((node.target, op), []).append(node)
                if node.args[0] == ALL_CALLS:
                    self.pin(node)
            elif op == "call_module":
                source.ensure(self.modules, node.target)
            elif op == "invoke":
                self.keep.add(node)
                self.invokes.append(node)
            elif op == "grad":
                self.pin(node)
            elif op == "skip_module":
                source.ensure(self.modules, node.target)
                self.keep.add(node)
                self.skips.setdefault(node.target, []).append(node)
            elif _is_edit(node):
                anchor = _anchor(node.args[0])
                if anchor is not None:
                    self.edits.setdefault(anchor, []).append(node)

    def install(self) -> None:
        """A forward hook (output) or pre-hook (inputs) on each referenced module."""
        self.handles.extend(source.activate(self.modules, {*(path for path, _ in self.events), *self.skips}))
        for path, kind in self.events:
            module = self.modules[path]
            if kind == "output":
                self.handles.append(module.register_forward_hook(self.output_hook(path)))
            else:
                self.handles.append(module.register_forward_pre_hook(self.inputs_hook(path), with_kwargs=True))
        for path in self.skips:
            module = self.modules[path]
            self.handles.append(source.ForwardSwap(module, self.skipping_forward(path)(module.forward)))

    def skipping_forward(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A forward that, at the calls the graph skips, does not run: the skip's value is its output."""
        calls = [0]

        def wrap(forward: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                call, calls[0] = calls[0], calls[0] + 1
                nodes = [n for n in self.skips[path] if n.args[0] in (call, ALL_CALLS) and n not in self.skipped]
                if self.busy or not nodes or threading.get_ident() != self.thread:
                    return forward(*args, **kwargs)
                return self.skipped_output(nodes, forward, args, kwargs)
            return run
        return wrap

    def skipped_output(self, nodes: list[Node], forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """The skips' values as the module's output (the module runs only for invokes that do not skip it)."""
        for node in nodes:
            if node not in self.env:
                raise CausalityError(f"This skip cannot be applied: its value is not there when the module "
                                     f"runs.\n  the skip: {describe_line(node.where)}")
        whole = [n for n in nodes if n.invoke is None or self.batch.whole]
        if whole:
            return self.env[whole[-1]]
        output = forward(*args, **kwargs)
        for node in nodes:
            output = self.merge(output, self.env[node], node.invoke)
        return output

    def output_hook(self, path: str) -> Callable[..., Any]:
        key = (path, "output")

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if self.busy or threading.get_ident() != self.thread:
                return None
            return self.fire(key, output)
        return hook

    def inputs_hook(self, path: str) -> Callable[..., Any]:
        key = (path, "inputs")

        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
            if self.busy or threading.get_ident() != self.thread:
                return None
            return self.fire(key, (args, kwargs))
        return hook

    def fire(self, key: tuple[str, str], value: Any) -> Any:
        """A module produced a value: give each matching event node its rows, run what is ready."""
        call = self.calls[key] = self.calls.get(key, -1) + 1
        fired = [n for n in self.events[key] if n.args[0] == call or n.args[0] == ALL_CALLS]
        if not fired:
            return None
        for node in fired:
            self.give(node, self.narrow(value, node.invoke))
        return self.settle(fired, value)

    def settle(self, fired: list[Node], value: Any) -> Any:
        """Run what is ready, check causality, stop if asked, then write back swapped values."""
        self.drain()
        for node in fired:
            self.check_edits(node)
        if self.stop_requested:
            raise EarlyStop()
        changed = False
        for node in fired:
            if node in self.swaps:
                value = self.merge(value, self.swaps.pop(node), node.invoke)
                changed = True
        return value if changed else None

    def give(self, node: Node, value: Any) -> None:
        """Hand an event its value; a repeating event (`.all()`, gradients) re-runs what depends on it."""
        if node in self.given:
            closure = self.closures.get(node, ())
            again = set(closure) | {node}
            for user in closure:
                self.skipped.discard(user)
                self.waiting[user.index] = sum(1 for dep in user.deps if dep in again)
        self.given.add(node)
        self.complete(node, value)

    def pin(self, node: Node) -> None:
        """A repeating event (`.all()`, a gradient): what depends on it re-runs, so its inputs must stay."""
        closure = _downstream(node)
        self.closures[node] = closure
        inside = set(closure) | {node}
        for user in closure:
            self.keep.update(dep for dep in user.deps if dep not in inside)

    def check_edits(self, event: Node) -> None:
        for edit in self.edits.get(event, ()):
            if self.pending(edit):
                missing = self.first_missing(edit)
                raise CausalityError(
                    f"This edit cannot be applied: it changes a value when the model produces it, "
                    f"but it needs a value that the model produces only later.\n"
                    f"  the edit: {describe_line(edit.where)}\n"
                    f"  the later value: {describe_line(missing.where)}{_event_name(missing)}")

    def pending(self, node: Node) -> bool:
        """Whether node has yet to run (after a drain: it waits for a value, or is an event not yet given)."""
        if node in self.skipped:
            return False
        return self.waiting[node.index] > 0 or (node.op in self.external and node not in self.given)

    def first_missing(self, node: Node) -> Node:
        """Follow pending dependencies down to the value that never arrived."""
        while True:
            pending = [d for d in node.deps if self.pending(d)]
            if not pending:
                return node
            node = pending[0]

    # -- batch rows ----------------------------------------------------------------------------
    def narrow(self, value: Any, invoke: int | None) -> Any:
        """An invoke's rows of every batched tensor in value (the whole value for the whole batch)."""
        if invoke is None or self.batch.whole:
            return value
        return map_leaves(value, lambda leaf: self.rows_of(leaf, invoke))

    def rows_of(self, leaf: Any, invoke: int) -> Any:
        rows = self.batch.rows(leaf, invoke)
        if rows is None:
            return WITHHELD if self.shared and not isinstance(leaf, _PLAIN_LEAVES) else leaf
        part = leaf[rows[0]:rows[1]]
        self.sources[id(part)] = (part, leaf, *rows)
        return part

    def merge(self, full: Any, part: Any, invoke: int | None) -> Any:
        """Put an invoke's rows back into the whole batch (cat keeps autograd intact)."""
        if invoke is None or self.batch.whole:
            return part
        return zip_leaves(full, part, lambda f, p: self.put_rows(f, p, invoke))

    def put_rows(self, full: Any, part: Any, invoke: int) -> Any:
        rows = self.batch.rows(full, invoke)
        if self.shared and (part is WITHHELD or part is full):
            return full
        if self.shared and (rows is None or not isinstance(part, torch.Tensor)):
            raise SharedValueError("In a forward shared by several users' jobs, a job may replace only its own "
                                   "rows of batched values.")
        if rows is None or not isinstance(part, torch.Tensor):
            return part
        start, stop = rows
        return torch.cat([full[:start], part.to(full.dtype), full[stop:]])

    # -- intervention ops ------------------------------------------------------------------------
    def invoke(self, node: Node, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, kwargs

    def input(self, node: Node, inputs: tuple) -> Any:
        return first_input(inputs)

    def swap(self, node: Node, old: Any, value: Any, first: bool = False) -> None:
        event = node.args[0]
        if first:
            args, kwargs = self.swaps.get(event, old)
            if args:
                value = ((value, *args[1:]), kwargs)
            else:
                name = next(iter(kwargs))
                value = (args, {**kwargs, name: value})
        self.swaps[event] = value

    def skip_module(self, node: Node, call: int, value: Any) -> Any:
        return value

    def current(self, node: Node, value: Any, *_: Any) -> Any:
        return self.swaps.get(node.args[0], value)

    def call_module(self, node: Node, *args: Any, hook: bool = False, **kwargs: Any) -> Any:
        """Call a module from the graph; with `hook=True` the call is one of the module's calls (its events fire)."""
        self.busy = not hook
        try:
            return self.modules[node.target](*args, **kwargs)
        finally:
            self.busy = False

    def parameter(self, node: Node, name: str) -> torch.Tensor:
        """A module's parameter or buffer; one the graph edits in place is its data, restored after the run."""
        tensor = _tensor_of(self.modules[node.target], name)
        if node not in self.edits:
            return tensor
        with torch.no_grad():
            self.originals.append((tensor, tensor.detach().clone()))
        return tensor.data  # edits in place reach the model, without autograd's leaf check

    def restore_parameters(self) -> None:
        """Undo in-place edits of parameters (last edit first)."""
        if not self.originals:
            return
        with torch.no_grad():
            for tensor, original in reversed(self.originals):
                tensor.copy_(original)
        self.originals.clear()

    def grad(self, node: Node, tensor: torch.Tensor, backward: int | None = None) -> Any:
        full, view = self.grad_source(node, tensor)
        self.handles.append(full.register_hook(lambda g: self.fire_grad(node, g, backward, view)))
        return WAIT

    def grad_source(self, node: Node, tensor: torch.Tensor) -> tuple[torch.Tensor, Callable | None]:
        """The tensor whose gradient to hook for `tensor.grad`, and how to cut tensor's part out of it.

        An invoke's rows are a slice of the batch; a view made in the trace (`output[0]`, `output[:, -1]`) is
        off the loss's path, so its gradient is cut from that of the tensor it views, as autograd would give it.
        """
        _, full, start, stop = self.sources.get(id(tensor), (None, None, None, None))
        if full is not None:
            return full, lambda g: g[start:stop]
        made_here = node.args[0].op not in EVENTS
        if made_here and tensor._is_view() and tensor._base.requires_grad:
            return tensor._base, tensor._view_func
        return tensor, None

    def fire_grad(self, node: Node, grad: torch.Tensor, backward: int | None, view: Callable | None) -> Any:
        """A gradient arrived: give the grad node its part, run what is ready, return the edited gradient."""
        if threading.get_ident() != self.thread or backward not in (None, self.backward_pass):
            return None
        part = grad if view is None else view(grad)
        if node in self.edits:
            part = part.clone()  # hooks must not edit their argument
        self.give(node, part)
        self.drain()
        self.check_edits(node)
        new = self.swaps.pop(node, part if node in self.edits else None)
        if new is None or view is None:
            return new
        whole = grad.clone()
        view(whole).copy_(new.to(grad.dtype))
        return whole

    def backward(self, node: Node, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # Nodes already waiting to run stay parked: inside the backward pass only what the
        # gradients wake may run (autograd runs hooks with grad mode off).
        outer, self.backward_pass = self.backward_pass, node.index
        parked = self.ready[:]  # the same list stays the queue: a drain in progress holds it
        self.ready.clear()
        try:
            tensor.backward(*args, **kwargs)
        finally:
            self.backward_pass = outer
            self.ready.extend(parked)
            heapq.heapify(self.ready)


def _is_edit(node: Node) -> bool:
    if node.op in ("swap", "setattr"):
        return True
    if node.op == "call_function":
        return node.target in _INPLACE_OPS
    return node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")


def _anchor(value: Any) -> Node | None:
    """The event whose value an edit changes, following item, attribute and view steps."""
    while type(value) is Node:
        if value.op in EVENTS or value.op in ("grad", "parameter"):
            return value
        if value.op in ("current", "input", "getattr"):
            value = value.args[0]
        elif value.op == "call_function" and value.target is operator.getitem:
            value = value.args[0]
        elif value.op == "call_method" and value.target in _VIEWS:
            value = value.args[0]
        else:
            return None
    return None


def _tensor_of(module: torch.nn.Module, name: str) -> torch.Tensor:
    """A module's own parameter or buffer by name (nothing else: the name may come from a request)."""
    tensor = module._parameters.get(name, module._buffers.get(name))
    if tensor is None:
        raise AttributeError(f"The module has no parameter or buffer '{name}'.")
    return tensor


def _downstream(node: Node) -> list[Node]:
    """Every node that depends on node, directly or not, in definition order."""
    nodes = node.graph.nodes
    seen: set[int] = set()
    todo = list(node.users)
    while todo:
        user = todo.pop()
        if user not in seen:
            seen.add(user)
            todo.extend(nodes[user].users)
    return [nodes[i] for i in sorted(seen)]


def _event_name(node: Node) -> str:
    return f" (the {node.op} of module '{node.target}')" if node.op in EVENTS else ""


def __getattr__(name: str) -> Any:
    """`from nnsight.intervention.interleaver import eproperty`, where nnsight keeps it (loaded on first use)."""
    if name == "eproperty":
        from .eproperty import eproperty
        return eproperty
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
