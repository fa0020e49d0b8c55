"""Tracer: records what the user writes on proxies into graphs; one leak-proof enter and exit."""
from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Callable

import torch

from . import compile
from .errors import TraceError
from .graph import Graph
from .local import current, stack
from .node import OWN_ARGS, Node, where_of
from .patching import install_patches, pause_gc, remove_patches, resume_gc
from .proxy import Proxy, new_proxy, set_experiment, set_node
from .walk import map_leaves

__all__ = ["Experiment", "Tracer"]

_CONTAINERS = (tuple, list, dict, slice)
_PLAIN = frozenset({int, float, bool, str, type(None), torch.Tensor})  # never hold a proxy


class Experiment:
    """The graphs of one outermost `with` block (a trace, or a session with its traces and loops).

    `building` is True while the block records; `results` holds the saved values once it ran;
    `recorder` is the innermost open recorder (where operations on this experiment's proxies go);
    `pending` says where the values are while a run that did not block has not delivered them.
    """

    __slots__ = ("graphs", "building", "results", "recorder", "owners", "pending")

    def __init__(self) -> None:
        self.graphs: list[Graph] = []
        self.owners: dict[int, Any] = {}  # graph id -> the recorder that made it (traces: their model)
        self.building = True
        self.results: dict[Node, Any] = {}
        self.recorder: Any = None
        self.pending: str | None = None

    def new_graph(self, parent: Graph | None, kind: str, meta: dict | None = None) -> Graph:
        """A graph of this experiment, referenced by its id (its position in `graphs`)."""
        graph = Graph(len(self.graphs), parent, kind, meta)
        self.graphs.append(graph)
        return graph


class Tracer:
    """The recording state of one `with` block: its graph, current invoke, open condition, backward pass.

    Subclasses say what their graph is (`kind`), whether they may sit inside another block (`nests`),
    and what happens at the end (`exit`: run it, or hand it to the enclosing block).
    """

    kind = "trace"
    nests = False  # may be opened inside a session (or a loop of one)

    def __init__(self) -> None:
        self.experiment: Experiment | None = None
        self.graph: Graph | None = None
        self.parent: Graph | None = None  # the enclosing block's graph, when nested
        self.current_invoke: int | None = None
        self.guard: Node | None = None
        self.backward: Node | None = None
        self.checker: Callable[[Node], Any] | None = None  # runs each new node on fake values (validate)
        self.job: Any = None  # a run that does not block (remote, blocking=False): its job handle
        self._entered = False

    # -- the context ----------------------------------------------------------------------------
    def __enter__(self) -> Any:
        if self._entered:
            raise TraceError(f"This {self.kind} has already been used; open a new one "
                             f"(e.g. `with model.trace(...)`) for another run.")
        self._entered = True
        pause_gc()
        try:
            self.join()
            try:
                install_patches()
                try:
                    entered = self.begin()
                except BaseException:
                    remove_patches()
                    raise
            except BaseException:
                self.leave()
                raise
        except BaseException:
            resume_gc()
            raise
        compile.enter(self)  # native control flow: the block may run compiled (tracing/compile.py)
        return self if entered is None else entered

    def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
        return compile.exit(self, kind, error, tb, self._close)

    def _close(self, kind: Any, error: Any, tb: Any) -> None:
        """Stop recording; run (or hand over) the graph unless the block failed; resume gc in any case."""
        try:
            try:
                if kind is None:
                    self.finish()
            finally:
                remove_patches()
                self.leave()
            if kind is None:
                self.end()
        finally:
            resume_gc()

    def join(self) -> None:
        """Join the enclosing experiment (or start one) and become this thread's current recorder."""
        outer = current()
        if outer is not None and outer.experiment.building:
            if not self.nests or not getattr(outer, "holds_traces", False):
                raise TraceError(f"A {self.kind} cannot be opened inside another {outer.kind}: use "
                                 f"`tracer.invoke(...)` for another batch in the same forward, or "
                                 f"`with model.session():` around traces that run one after another.")
            self.experiment, self.parent = outer.experiment, outer.graph
        else:
            self.experiment = Experiment()
        experiment = self.experiment
        self.graph = experiment.new_graph(self.parent, self.kind, self.meta())
        if self.parent is not None:
            self.graph.owner = outer.create(self.kind, self.graph.id)
        self._previous, experiment.recorder = experiment.recorder, self
        stack().append(self)

    def leave(self) -> None:
        """Stop being the current recorder; the outermost one ends the experiment's recording."""
        stack().pop()
        self.experiment.recorder = self._previous
        if self.parent is None:
            self.experiment.building = False

    def meta(self) -> dict:
        """What the wire needs to rebuild this graph (subclasses add the model, method, ...)."""
        return {}

    def begin(self) -> Any:
        """Subclass work at the start of the block; a value to bind with `as` instead of the tracer."""
        return None

    def finish(self) -> None:
        """Subclass work at the end of the block while it still records."""

    def end(self) -> None:
        """Subclass work at the end of the block (run the experiment, when outermost)."""

    # -- recording ------------------------------------------------------------------------------
    def create(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
               guarded: bool = True, frame: FrameType | None = None) -> Node:
        """Record one operation in the open graph; proxies among the arguments become dependencies.

        frame: where to start looking for the user's line (the caller of a proxy's operator).
        """
        graph, experiment = self.graph, self.experiment
        deps: list[Node] = []
        refs: list[int] = []            # positions of the arguments that are nodes
        inside: list[Node] | None = None  # nodes found inside containers
        unwrapped = list(args)
        for position, arg in enumerate(args):
            kind = type(arg)
            if kind in _PLAIN:
                continue
            if kind is Proxy and arg.experiment is experiment and arg.node.graph is graph:
                arg = unwrapped[position] = arg.node  # the common case, inlined
                if arg not in deps:
                    deps.append(arg)
            elif kind in _CONTAINERS:
                inside = [] if inside is None else inside
                arg = unwrapped[position] = map_leaves(arg, lambda v: self._unwrap(v, deps, inside))
            elif isinstance(arg, Proxy):
                arg = unwrapped[position] = self.node_of(arg, deps)
            if type(arg) is Node:
                refs.append(position)
        if kwargs:
            inside = [] if inside is None else inside
            kwargs = map_leaves(kwargs, lambda v: self._unwrap(v, deps, inside))
        guard = self.guard
        if guarded and guard is not None and guard not in deps:
            deps.append(guard)
        refs = () if op in OWN_ARGS else None if inside else tuple(refs)
        node = graph.create_node(op, target, tuple(unwrapped), kwargs, deps, refs,
                                 where_of(frame or sys._getframe(1)), self.current_invoke)
        if self.checker is not None:
            self.checker(node)
        return node

    def _unwrap(self, value: Any, deps: list[Node], inside: list[Node]) -> Any:
        """A leaf inside a container argument: a proxy becomes its node (noted in inside)."""
        if isinstance(value, Proxy):
            value = self.node_of(value, deps)
        if type(value) is Node:
            inside.append(value)
        return value

    def proxy(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
              frame: FrameType | None = None) -> Proxy:
        """Record one operation and return its proxy."""
        return Proxy(self.create(op, target, args, kwargs, True, frame or sys._getframe(1)), self.experiment)

    def call(self, target: Any, args: tuple, frame: FrameType) -> Proxy:
        """`proxy("call_function", target, args)` from an operator or torch function of a proxy: a hot path of
        recording. Arguments that are all this graph's proxies or plain values need no walk."""
        graph = self.graph
        unwrapped, deps, refs = [], [], []
        for position, arg in enumerate(args):
            kind = type(arg)
            if kind is Proxy and arg.node.graph is graph:
                node = arg.node
                unwrapped.append(node)
                refs.append(position)
                if node not in deps:
                    deps.append(node)
            elif kind in _PLAIN:
                unwrapped.append(arg)
            else:  # containers, proxies of other graphs or experiments
                return self.proxy("call_function", target, args, None, frame)
        return self._called(target, tuple(unwrapped), deps, tuple(refs), frame)

    def binary(self, target: Any, left: Any, right: Any, frame: FrameType) -> Proxy:
        """`left <op> right` with a proxy on one side: the hottest path of recording, so its cases are written
        out (sides that are this graph's proxies or plain values; anything else goes through `call`)."""
        graph = self.graph
        if type(left) is Proxy and left.node.graph is graph:
            if type(right) in _PLAIN:
                node = left.node
                return self._called(target, (node, right), [node], (0,), frame)
            if type(right) is Proxy and right.node.graph is graph:
                first, second = left.node, right.node
                return self._called(target, (first, second), [first] if first is second else [first, second],
                                    (0, 1), frame)
        elif type(left) in _PLAIN and type(right) is Proxy and right.node.graph is graph:
            node = right.node
            return self._called(target, (left, node), [node], (1,), frame)
        return self.call(target, (left, right), frame)

    def _called(self, target: Any, args: tuple, deps: list[Node], refs: tuple[int, ...], frame: FrameType) -> Proxy:
        """The proxy of a new call_function node whose node arguments (at refs) are deps."""
        guard = self.guard
        if guard is not None and guard not in deps:
            deps.append(guard)
        node = self.graph.create_node("call_function", target, args, None, deps, refs, where_of(frame),
                                      self.current_invoke)
        if self.checker is not None:
            self.checker(node)
        proxy = new_proxy(Proxy)
        set_node(proxy, node)
        set_experiment(proxy, self.experiment)
        return proxy

    def node_of(self, proxy: Proxy, deps: list[Node]) -> Any:
        """The node behind a proxy of this experiment (a finished experiment's proxy gives its value)."""
        if proxy.experiment is not self.experiment:
            if not proxy.experiment.building:
                return proxy.value
            raise TraceError("This value belongs to another trace that is still being recorded.")
        node = proxy.node
        if node.graph is self.graph:
            if node not in deps:
                deps.append(node)
        else:
            anchor = link(node, self.graph)
            if anchor is not None and anchor not in deps:
                deps.append(anchor)
        return node

    def describe(self, node: Node, name: str) -> Any:
        """An attribute (shape, dtype, ...) of a node's fake value, from the trace that recorded it."""
        owner = self.experiment.owners.get(node.graph.id)
        if owner is None or owner is self:
            raise TraceError(f"This value has no `.{name}` while the {self.kind} is being recorded: it is not "
                             f"a value of a trace. Read it after the {self.kind} has run.")
        return owner.describe(node, name)

    def scope(self, **state: Any) -> Scope:
        """Set recording state (graph, current_invoke, guard, backward) for a block, then restore it."""
        return Scope(self, state)

    def backward_recorded(self, node: Node) -> None:
        """A `backward` node was recorded (subclasses tie earlier gradient reads to it)."""

    def open_backward(self, node: Node | None) -> None:
        """Make new `.grad` nodes belong to this backward pass (None: no pass)."""
        self.backward = node


class Scope:
    """`with tracer.scope(name=value):` sets the tracer's attributes for the block and puts them back after."""

    __slots__ = ("tracer", "state", "before")

    def __init__(self, tracer: Tracer, state: dict[str, Any]) -> None:
        self.tracer, self.state = tracer, state

    def __enter__(self) -> None:
        tracer = self.tracer
        self.before = {name: getattr(tracer, name) for name in self.state}
        for name, value in self.state.items():
            setattr(tracer, name, value)

    def __exit__(self, *exc: Any) -> None:
        for name, value in self.before.items():
            setattr(self.tracer, name, value)


def link(node: Node, graph: Graph) -> Node | None:
    """Connect a node of another graph of the experiment to a user in `graph`.

    Below their lowest common graph, `node` is exported by the graphs that hold it and free in those
    that read it; in the common graph the reader's side waits for the holder's side. Returns the node
    a new node of `graph` must wait for (None when the wait is on an enclosing subgraph's node).
    """
    here, there = graph.ancestors(), node.graph.ancestors()
    common = next(g for g in here if g in there)
    holders, readers = there[:there.index(common)], here[:here.index(common)]
    for holder in holders:
        holder.exports.add(node)
    anchor = holders[-1].owner if holders else node
    for reader in readers:
        reader.free.add(node)
    if not readers:
        return anchor
    common.depend(readers[-1].owner, anchor)
    return None

