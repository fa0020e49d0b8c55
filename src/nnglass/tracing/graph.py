"""Graph: the nodes of one trace, session or loop body in definition order (inert data, like torch.fx)."""
from __future__ import annotations

from typing import Any

from .node import Node

__all__ = ["Graph"]

NO_KWARGS: dict = {}  # shared by every node without keyword arguments; never mutated


class Graph:
    """Nodes in definition order; a subgraph (loop body, a session's trace) is referenced by `id`.

    `kind` says what runs it ("trace", "session", "loop", "edit"); `meta` holds what the wire needs to
    rebuild it (the model's name, the run method, its keywords, the number of invokes). `free` are nodes
    of enclosing graphs whose values this graph reads; `exports` its nodes read after it by enclosing graphs.
    """

    def __init__(self, id: int = 0, parent: Graph | None = None, kind: str = "trace",
                 meta: dict | None = None) -> None:
        self.id = id
        self.parent = parent
        self.kind = kind
        self.meta = meta or {}
        self.nodes: list[Node] = []
        self.free: set[Node] = set()
        self.exports: set[Node] = set()
        self.owner: Node | None = None  # the node of the parent graph that runs this one

    @property
    def sequential(self) -> bool:
        """Whether nodes run strictly in definition order (sessions and loop bodies)."""
        return self.kind in ("session", "loop")

    def create_node(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
                    deps: list[Node] | None = None, refs: tuple[int, ...] | None = None, where: Any = None,
                    invoke: int | None = None) -> Node:
        """Append a node and link it as a user of its dependencies (refs: see Node; None walks the args)."""
        nodes = self.nodes
        index = len(nodes)
        node = Node(op, target, args, kwargs or NO_KWARGS, self, index, deps or [], refs, where, invoke)
        for dep in node.deps:
            dep.users.append(index)
        nodes.append(node)
        return node

    def depend(self, node: Node, dep: Node) -> None:
        """Make node (of this graph) also wait for dep (of this graph)."""
        if dep is not node and dep not in node.deps:
            node.deps.append(dep)
            dep.users.append(node.index)

    def ancestors(self) -> list[Graph]:
        """This graph, its parent, and so on up to the root."""
        chain, graph = [], self
        while graph is not None:
            chain.append(graph)
            graph = graph.parent
        return chain

    def __repr__(self) -> str:
        return f"Graph({self.kind} {self.id}, {len(self.nodes)} nodes)"
