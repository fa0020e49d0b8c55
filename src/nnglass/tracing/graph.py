"""Graph: the nodes of one experiment in definition order, and how new ones are added."""
from __future__ import annotations

from typing import Any, Callable

from .node import Node, map_nested, user_line
from .proxy import Proxy

_CONTAINERS = (tuple, list, dict, slice)
_NO_KWARGS: dict = {}  # shared by every node without keyword arguments; never mutated


class Graph:
    """Nodes in definition order, plus the scope new nodes are created in.

    A graph may sit inside another (a trace inside a session, a loop body): all graphs of
    one experiment share a root, and new nodes go to the innermost graph open for recording.
    """

    def __init__(self, parent: Graph | None = None, sequential: bool = False) -> None:
        self.nodes: list[Node] = []
        self.parent = parent
        self.root: Graph = self if parent is None else parent.root
        self.open: Graph = self           # on the root: the innermost graph now recording
        self.sequential = sequential      # run nodes strictly in order (sessions, loops)
        self.building = True              # False once the outermost `with` block has closed
        self.invoke: int | None = None    # batch slice new nodes belong to
        self.guard: Node | None = None    # innermost condition new nodes depend on
        self.backward: Node | None = None  # backward pass new `.grad` nodes belong to
        self.on_add: Callable[[Node], None] | None = None  # validation hook
        self.owner: Any = None            # the context that records into this graph
        self.children: list[Graph] = []   # graphs nested in this one (traces, loop bodies)
        if parent is not None:
            parent.children.append(self)

    def add(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
            guarded: bool = True) -> Node:
        """Record one operation in the open graph; proxies among args become dependencies."""
        graph = self.root.open
        deps: list[Node] = []
        nested = False
        unwrapped = []
        for arg in args:
            if type(arg) is Proxy and arg.graph.building:  # the common case, inlined
                arg = arg.node
                if arg not in deps:
                    deps.append(arg)
            elif isinstance(arg, Proxy) or type(arg) is Node:
                arg = _node_of(arg, deps)
            elif type(arg) in _CONTAINERS:
                before = len(deps)
                arg = map_nested(arg, lambda v: _node_of(v, deps))
                nested = nested or len(deps) > before or _holds_node(arg)
            unwrapped.append(arg)
        if kwargs:
            before = len(deps)
            kwargs = map_nested(kwargs, lambda v: _node_of(v, deps))
            nested = nested or len(deps) > before or _holds_node(kwargs)
        else:
            kwargs = _NO_KWARGS
        guard = graph.guard
        if guarded and guard is not None and guard not in deps:
            deps.append(guard)
        node = Node(op, target, tuple(unwrapped), kwargs, graph, deps, nested, user_line(), graph.invoke)
        for dep in deps:
            dep.users.append(node)
        graph.nodes.append(node)
        if graph.on_add is not None:
            graph.on_add(node)
        return node

    def proxy(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None) -> Proxy:
        """Record one operation and return its proxy."""
        node = self.add(op, target, args, kwargs)
        return Proxy(node, node.graph)

    def depend(self, node: Node, dep: Node) -> None:
        """Make `node` also wait for `dep`."""
        if dep not in node.deps:
            node.deps.append(dep)
            dep.users.append(node)

    def walk(self) -> list[Graph]:
        """This graph and every graph nested in it."""
        graphs = [self]
        for child in self.children:
            graphs.extend(child.walk())
        return graphs

    def close(self) -> None:
        """End recording: proxies of this graph and of nested ones now act like their values."""
        for graph in self.walk():
            graph.building = False


def _node_of(value: Any, deps: list[Node]) -> Any:
    """The node behind a proxy (collected in deps); a finished trace's proxy gives its value."""
    if type(value) is Node:
        node = value
    elif isinstance(value, Proxy):
        if not value.graph.building:
            return value.value
        node = value.node
    else:
        return value
    if node not in deps:
        deps.append(node)
    return node


def _holds_node(value: Any) -> bool:
    found: list[Node] = []
    map_nested(value, lambda v: found.append(v) if type(v) is Node else None)
    return bool(found)
