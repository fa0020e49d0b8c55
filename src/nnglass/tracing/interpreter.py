"""Interpreter: runs a graph's nodes as soon as their inputs exist; all run state lives here."""
from __future__ import annotations

import heapq
from typing import Any, Callable

from .errors import Exit, locate
from .graph import Graph
from .local import log
from .node import Node
from .walk import leaves, map_leaves

__all__ = ["Interpreter", "Run", "WAIT"]

WAIT = object()  # an op returns this when its value arrives later (from a hook)

class Run:
    """What every interpreter of one experiment shares: its graphs, the saved results, how traces run."""

    def __init__(self, graphs: list[Graph], results: dict, run_trace: Callable[..., dict] | None = None,
                 modules: dict | None = None) -> None:
        self.graphs = graphs
        self.results = results
        self.run_trace = run_trace    # (trace graph, initial env) -> env after the trace ran
        self.modules = modules or {}  # module path -> module, for module calls outside a trace

class Interpreter:
    """Dataflow execution of one graph, lowest index first among the ready; op names are method names.

    `env` maps nodes to values; a value is dropped after its last user ran unless it is kept (exported
    to an enclosing graph, needed again by a repeating event). Saved values are copied to `results`.
    """

    external = frozenset({"item"})  # ops whose values are handed in rather than computed
    neutral: frozenset[str] = frozenset()  # ops that, when skipped, count as done with no effect

    def __init__(self, graph: Graph, run: Run, env: dict | None = None) -> None:
        self.graph = graph
        self.run_state = run
        self.results = run.results
        self.env: dict[Node, Any] = env if env is not None else {}
        self.waiting: list[int] = []  # by node index: inputs not there yet
        self.uses: list[int] = []     # by node index: users that have not run yet
        self.keep: set[Node] = set(graph.exports)
        self.skipped: set[Node] = set()
        self.ready: list[int] = []
        self.stop_requested = False

    def start(self) -> None:
        """Count what each node waits for and queue those that wait for nothing."""
        nodes, external = self.graph.nodes, self.external
        self.waiting = [len(node.deps) for node in nodes]
        self.uses = [len(node.users) for node in nodes]
        self.ready = [node.index for node in nodes if not node.deps and node.op not in external]  # sorted: a heap

    def run(self) -> dict:
        """Run the whole graph; its env afterwards."""
        self.start()
        self.drain()
        return self.env

    def drain(self) -> None:
        """Run every ready node, lowest index first."""
        nodes, ready, pop, execute, skipped = self.graph.nodes, self.ready, heapq.heappop, self.execute, self.skipped
        while ready:
            node = nodes[pop(ready)]
            if node not in skipped:
                execute(node)

    def execute(self, node: Node) -> None:
        """Run one node and hand its value to its users."""
        env = self.env
        try:
            args, kwargs, refs = node.args, node.kwargs, node.refs
            if refs is None:
                lookup = lambda v: env[v] if type(v) is Node else v  # noqa: E731
                args, kwargs = map_leaves(args, lookup), map_leaves(kwargs, lookup)
            elif refs:
                args = list(args)
                for position in refs:
                    args[position] = env[args[position]]
            if node.op == "call_function":  # the hot path, without a method lookup
                value = node.target(*args, **kwargs) if kwargs else node.target(*args)
            else:
                value = getattr(self, node.op)(node, *args, **kwargs)
        except Exception as exc:
            if getattr(exc, "nnglass_node", None) is not None:
                raise
            raise locate(exc, node) from exc
        if value is not WAIT:
            self.complete(node, value)

    def complete(self, node: Node, value: Any) -> None:
        """Store node's value, wake users whose inputs are all there, free inputs at their last use."""
        env = self.env
        env[node] = value
        if node.saved:
            self.results[node] = value
        waiting, ready = self.waiting, self.ready
        for user in node.users:
            count = waiting[user] = waiting[user] - 1
            if count == 0:
                heapq.heappush(ready, user)
        uses, keep = self.uses, self.keep
        for dep in node.deps:
            count = uses[dep.index] = uses[dep.index] - 1
            if count == 0 and dep not in keep:
                env.pop(dep, None)

    def skip(self, node: Node) -> None:
        """Mark everything that depends on node as never running (a false condition)."""
        nodes = self.graph.nodes
        todo = [(nodes[i], node) for i in node.users]
        while todo:
            user, source = todo.pop()
            if user in self.skipped or user in self.env:
                continue
            if user.op in self.neutral:  # done, with no effect: what reads past it still runs
                self.skipped.add(user)
                self.complete(user, None)
                continue
            if user.op == "stop" and user.target == "barrier" or user.op == "pick" and _is_choice(source, user):
                self.waiting[user.index] -= 1  # waits for what runs, not for what is skipped
                if self.waiting[user.index] == 0:
                    heapq.heappush(self.ready, user.index)
                continue
            self.skipped.add(user)
            todo.extend((nodes[i], user) for i in user.users)

    def subgraph(self, node: Node) -> tuple[Graph, dict]:
        """The graph a node runs (by id) and its initial env: the outer values it reads."""
        graph = self.run_state.graphs[node.target]
        env = self.env
        return graph, {free: env[free] for free in graph.free if free in env}

    def export(self, graph: Graph, inner: dict) -> None:
        """Values of a finished subgraph that enclosing graphs read later."""
        for node in graph.exports:
            if node in inner:
                self.env[node] = inner[node]

    # -- generic ops ----------------------------------------------------------------------
    def call_method(self, node: Node, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, node.target)(*args, **kwargs)

    def getattr(self, node: Node, obj: Any) -> Any:
        return getattr(obj, node.target)

    def setattr(self, node: Node, obj: Any, value: Any) -> None:
        setattr(obj, node.target, value)

    def call_module(self, node: Node, *args: Any, hook: bool = False, **kwargs: Any) -> Any:
        return self.run_state.modules[node.target](*args, **kwargs)

    def log(self, node: Node, *values: Any) -> None:
        log(*values)

    def cond(self, node: Node, condition: Any) -> bool:
        if not bool(condition):
            self.skip(node)
            return False
        return True

    def pick(self, node: Node, test: Any, then: Any, otherwise: Any) -> Any:
        """A variable set in a branch of an `if` on a proxy, after it: its value from the branch that ran."""
        env = self.env
        lookup = lambda v: env[v] if type(v) is Node else v  # noqa: E731
        return map_leaves(then if lookup(test) else otherwise, lookup)

    def fired(self, node: Node, *marks: Node) -> bool:
        """Whether the marks (nodes it does not wait for, which have no users) had run when this node ran."""
        return all(mark in self.env for mark in marks)

    def stop(self, node: Node, *_: Any) -> None:
        self.stop_requested = True

    def exit(self, node: Node) -> None:
        raise Exit(node.target)

    def trace(self, node: Node, *_: Any) -> None:
        graph, env = self.subgraph(node)
        self.export(graph, self.run_state.run_trace(graph, env))

    def iter(self, node: Node, iterable: Any) -> None:
        graph, outer = self.subgraph(node)
        item = graph.nodes[0]  # the loop variable
        for value in iterable:
            loop = Interpreter(graph, self.run_state, dict(outer))
            loop.keep |= graph.exports
            loop.start()
            loop.complete(item, value)
            try:
                loop.drain()
            except Exit as exit:
                if exit.scope != "loop":
                    raise
                self.export(graph, loop.env)
                break
            self.export(graph, loop.env)

def run_graph(graph: Graph, run: Run, scope: str = "session") -> dict:
    """Run a session (or other sequential) graph in order; an `exit` of that scope ends it."""
    try:
        return Interpreter(graph, run).run()
    except Exit as exit:
        if exit.scope != scope:
            raise
        return {}


def _is_choice(source: Node, pick: Node) -> bool:
    """Whether source is (inside) one of the values a `pick` node chooses from, rather than its test or guard."""
    return any(leaf is source for leaf in leaves(pick.args[1:]))
