"""Executor: runs a graph's nodes as soon as their inputs exist, in definition order among the ready."""
from __future__ import annotations

import heapq
from typing import Any

from .graph import Graph
from .node import DONE, EMPTY, PENDING, SKIPPED, Node, describe_line

WAIT = object()  # an op returns this when its value arrives later (from a hook)


class ExecutionError(Exception):
    """An error while running a node, for exceptions that cannot be rebuilt with a message."""


class EarlyStop(BaseException):
    """Unwinds the model's forward pass after a stop node ran (BaseException: model code must not catch it)."""


class Executor:
    """Dataflow execution of one graph; op names are method names."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ready: list[int] = []    # heap of node indices
        self.stop_requested = False

    def start(self) -> None:
        """Reset run state and queue the nodes that wait for nothing."""
        ready = self.ready
        for node in self.graph.nodes:
            node.state = PENDING
            node.remaining = len(node.deps)
            node.uses_left = len(node.users)
            if not node.deps and not self.external(node):
                ready.append(node.index)
        heapq.heapify(ready)

    def external(self, node: Node) -> bool:
        """Whether a node's value is handed in from outside (a hook) rather than computed."""
        return False

    def drain(self) -> None:
        """Run every ready node, lowest index first."""
        nodes, ready = self.graph.nodes, self.ready
        while ready:
            node = nodes[heapq.heappop(ready)]
            if node.state == PENDING:
                self.execute(node)

    def execute(self, node: Node) -> None:
        """Run one node and hand its value to its users."""
        args, kwargs = node.resolve_args()
        try:
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
        ready = self.ready
        for user in node.users:
            user.remaining -= 1
            if user.remaining == 0:
                heapq.heappush(ready, user.index)
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
        """Drop every value that was not saved."""
        for node in self.graph.nodes:
            if not node.saved:
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
        print(*values)

    def cond(self, node: Node, condition: Any) -> bool:
        if not bool(condition):
            self.skip(node)
            return False
        return True

    def stop(self, node: Node, *_: Any) -> None:
        self.stop_requested = True


def locate(exc: Exception, node: Node) -> Exception:
    """The same kind of exception, its message extended with the user's line that made the node."""
    message = f"{exc}\n  while running {node.name}, created at {describe_line(node.where)}"
    try:
        located = type(exc)(message)
    except Exception:
        located = ExecutionError(message)
    located.nnglass_node = node  # type: ignore[attr-defined]
    return located
