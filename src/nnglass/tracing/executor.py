"""Executor: runs a graph's nodes as soon as their inputs exist, in definition order among the ready."""
from __future__ import annotations

import heapq
from typing import Any

from . import contexts
from .graph import Graph
from .node import DONE, EMPTY, PENDING, SKIPPED, Node, describe_line

WAIT = object()  # an op returns this when its value arrives later (from a hook)


class ExecutionError(Exception):
    """An error while running a node, for exceptions that cannot be rebuilt with a message."""


class EarlyStop(BaseException):
    """Unwinds the model's forward pass after a stop node ran (BaseException: model code must not catch it)."""


class Exit(BaseException):
    """`session.exit()` or `iterator.exit()` ran: unwinds to the session or the loop."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope

PINNED = 1 << 40  # added to uses_left of values needed again and again (loops, repeating events)


class Executor:
    """Dataflow execution of one graph; op names are method names."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ready: list[int] = []    # heap of node indices
        self.stop_requested = False

    def start(self) -> None:
        """Reset run state and queue the nodes that wait for nothing."""
        graph = self.graph
        nodes = graph.nodes
        for node in nodes:
            node.state = PENDING
        ready, alone, external = self.ready, graph.parent is None, self.external
        for node in nodes:
            # inside a session or loop, values from enclosing graphs are there already
            node.remaining = len(node.deps) if alone else sum(1 for dep in node.deps if dep.state != DONE)
            node.uses_left = len(node.users)
            if node.remaining == 0 and node.op not in external:
                ready.append(node.index)
        heapq.heapify(ready)

    # ops whose values are handed in from outside (a loop's item) rather than computed
    external = frozenset({"item"})

    def run(self) -> None:
        """Run the whole graph (sessions and loop bodies: strictly in order)."""
        self.start()
        self.run_started()

    def run_started(self) -> None:
        """Run what start() left to run."""
        if not self.graph.sequential:
            self.drain()
            return
        for node in self.graph.nodes:
            if node.state == PENDING and node.op not in self.external:
                if all(dep.state == DONE for dep in node.deps):
                    self.execute(node)

    def drain(self) -> None:
        """Run every ready node, lowest index first."""
        nodes, ready, pop, execute = self.graph.nodes, self.ready, heapq.heappop, self.execute
        while ready:
            node = nodes[pop(ready)]
            if node.state == PENDING:
                execute(node)

    def execute(self, node: Node) -> None:
        """Run one node and hand its value to its users."""
        try:
            if node.nested:
                args, kwargs = node.resolve_args()
            else:
                args, kwargs = [a.value if type(a) is Node else a for a in node.args], node.kwargs
            if node.op == "call_function":  # the hot path, without a method lookup
                value = node.target(*args, **kwargs) if kwargs else node.target(*args)
            else:
                value = getattr(self, node.op)(node, *args, **kwargs)
        except EarlyStop:
            raise
        except Exception as exc:
            if getattr(exc, "nnglass_node", None) is not None:
                raise
            raise locate(exc, node) from exc
        if value is not WAIT:
            self.complete(node, value)

    def complete(self, node: Node, value: Any) -> None:
        """Set a node's value, wake users whose inputs are now all there, free dead values."""
        node.value = value
        node.state = DONE
        graph = node.graph
        if not graph.sequential:  # sequential graphs run in order and need no ready queue
            for user in node.users:
                if user.graph is graph:
                    user.remaining -= 1
                    if user.remaining == 0:
                        heapq.heappush(self.ready, user.index)
        for dep in node.deps:
            dep.uses_left -= 1
            if dep.uses_left == 0 and not dep.saved:
                dep.value = EMPTY

    def skip(self, node: Node) -> None:
        """Mark everything that depends on node as never running (a false condition)."""
        stack = list(node.users)
        while stack:
            user = stack.pop()
            if user.state != PENDING:
                continue
            if user.op == "stop" and user.target == "barrier":
                user.remaining -= 1
                if user.remaining == 0:
                    heapq.heappush(self.ready, user.index)
                continue
            user.state = SKIPPED
            stack.extend(user.users)

    def finish(self) -> None:
        """Drop every value that was not saved and that no later graph waits for."""
        graph = self.graph
        alone = graph.parent is None and not graph.children
        for node in graph.nodes:
            if node.saved:
                continue
            if alone or not any(u.graph is not graph and u.state == PENDING for u in node.users):
                node.value = EMPTY

    # -- generic ops ----------------------------------------------------------------------
    def call_function(self, node: Node, *args: Any, **kwargs: Any) -> Any:
        return node.target(*args, **kwargs)

    def call_method(self, node: Node, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, node.target)(*args, **kwargs)

    def getattr(self, node: Node, obj: Any) -> Any:
        return getattr(obj, node.target)

    def setattr(self, node: Node, obj: Any, value: Any) -> None:
        setattr(obj, node.target, value)

    def log(self, node: Node, *values: Any) -> None:
        contexts.log(*values)

    def cond(self, node: Node, condition: Any) -> bool:
        if not bool(condition):
            self.skip(node)
            return False
        return True

    def stop(self, node: Node, *_: Any) -> None:
        self.stop_requested = True

    def exit(self, node: Node) -> None:
        raise Exit(node.target)

    def trace(self, node: Node, *inputs: Any) -> None:
        node.target.execute(inputs)

    def iter(self, node: Node, iterable: Any) -> None:
        body: Graph = node.target
        item = body.nodes[0]  # the loop variable
        for graph in body.walk():  # values from outside are needed in every iteration
            for inner in graph.nodes:
                for dep in inner.deps:
                    if not _inside(dep.graph, body):
                        dep.uses_left += PINNED
        for value in iterable:
            loop = Executor(body)
            loop.start()
            loop.complete(item, value)
            try:
                loop.run_started()
            except Exit as exit:
                if exit.scope != "loop":
                    raise
                break


def _inside(graph: Graph, outer: Graph) -> bool:
    while graph is not None:
        if graph is outer:
            return True
        graph = graph.parent
    return False


def locate(exc: Exception, node: Node) -> Exception:
    """The same kind of exception, its message extended with the user's line that made the node."""
    message = f"{exc}\n  while running {node.name}, created at {describe_line(node.where)}"
    try:
        located = type(exc)(message)
    except Exception:
        located = ExecutionError(message)
    located.nnglass_node = node  # type: ignore[attr-defined]
    return located
