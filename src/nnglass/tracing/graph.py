"""Graph: the nodes of one experiment in definition order, and how new ones are added."""
from __future__ import annotations

from typing import Any, Callable

from .node import Node, map_nested, user_line
from .proxy import Proxy

_CONTAINERS = (tuple, list, dict, slice)


class Graph:
    """Nodes in definition order, plus the scope new nodes are created in."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.building = True      # False once the `with` block has closed
        self.invoke: int | None = None   # batch slice new nodes belong to
        self.guard: Node | None = None   # innermost condition new nodes depend on
        self.backward: Node | None = None  # backward pass new `.grad` nodes belong to
        self.on_add: Callable[[Node], None] | None = None  # validation hook

    def add(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
            guarded: bool = True) -> Node:
        """Record one operation; proxies among args become dependencies."""
        deps: list[Node] = []
        args, nested = _unwrap_args(args, deps)
        if kwargs:
            hits: list[Node] = []
            kwargs = map_nested(kwargs, lambda v: _node_of(v, deps, hits))
            nested = nested or bool(hits)
        else:
            kwargs = {}
        if guarded and self.guard is not None and self.guard not in deps:
            deps.append(self.guard)
        node = Node(op, target, args, kwargs, len(self.nodes), deps, nested, user_line(3), self.invoke)
        for dep in deps:
            dep.users.append(node)
        self.nodes.append(node)
        if self.on_add is not None:
            self.on_add(node)
        return node

    def proxy(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None) -> Proxy:
        """Record one operation and return its proxy."""
        return Proxy(self.add(op, target, args, kwargs), self)

    def depend(self, node: Node, dep: Node) -> None:
        """Make `node` also wait for `dep`."""
        if dep not in node.deps:
            node.deps.append(dep)
            dep.users.append(node)


def _unwrap_args(args: tuple, deps: list[Node]) -> tuple[tuple, bool]:
    """Proxies (or nodes) -> nodes, collected in deps; also say whether a container held one."""
    out = []
    nested = False
    for arg in args:
        if type(arg) in _CONTAINERS:
            hits: list[Node] = []
            arg = map_nested(arg, lambda v: _node_of(v, deps, hits))
            nested = nested or bool(hits)
        else:
            arg = _node_of(arg, deps)
        out.append(arg)
    return tuple(out), nested


def _node_of(value: Any, deps: list[Node], hits: list[Node] | None = None) -> Any:
    if type(value) is Node:
        node = value
    elif isinstance(value, Proxy):
        node = value.node
    else:
        return value
    if node not in deps:
        deps.append(node)
    if hits is not None:
        hits.append(node)
    return node
