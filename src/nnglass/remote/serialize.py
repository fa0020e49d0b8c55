"""Serialize: intervention graphs to JSON and back (no pickle, no code), and their saved results."""
from __future__ import annotations

from typing import Any, Callable

from .. import __version__
from ..intervention.tracer import Tracer
from ..tracing.graph import Graph
from ..tracing.node import Node, location
from . import allowlist
from .allowlist import WireError
from .values import Decoder, Encoder

WIRE_VERSION = 1
_MODULE_OPS = ("output", "inputs", "call_module")
_PLAIN_OPS = {"getattr", "setattr", "call_method", "call_function", "input", "current", "swap", "grad",
              "backward", "log", "cond", "stop", "exit", "item", "trace", "iter"} | set(_MODULE_OPS)


# -- client side: a trace or session -> request -----------------------------------------------------
def request(context: Any) -> dict:
    """The JSON request for a finished trace or session (refuses what the server may not run)."""
    graphs = context.graph.walk()
    ids = {id(g): i for i, g in enumerate(graphs)}
    encode = Encoder(ref=lambda node: {"$node": [ids[id(node.graph)], node.index]})
    body = {
        "nnglass": __version__,
        "wire": WIRE_VERSION,
        "graphs": [_encode_graph(g, ids, encode) for g in graphs],
    }
    if isinstance(context, Tracer):
        body["inputs"] = encode(tuple(inv.raw for inv in context.invokers))
    body["tensors"] = encode.blob()
    return body


def _encode_graph(graph: Graph, ids: dict, encode: Encoder) -> dict:
    return {
        "parent": None if graph.parent is None else ids[id(graph.parent)],
        "sequential": graph.sequential,
        "owner": _encode_owner(graph.owner, encode),
        "nodes": [_encode_node(node, ids, encode) for node in graph.nodes],
    }


def _encode_owner(owner: Any, encode: Encoder) -> dict:
    if isinstance(owner, Tracer):
        return {"kind": "trace", "model": remote_name(owner.model), "method": owner.method,
                "call_kwargs": encode(owner.call_kwargs), "invokes": len(owner.invokers)}
    return {"kind": "loop" if owner.__class__.__name__ == "Iterator" else "session"}


def _encode_node(node: Node, ids: dict, encode: Encoder) -> dict:
    return {
        "op": node.op,
        "target": _encode_target(node, ids),
        "args": encode(node.args),
        "kwargs": encode(node.kwargs),
        "deps": [[ids[id(d.graph)], d.index] for d in node.deps],
        "invoke": node.invoke,
        "saved": node.saved,
        "where": list(location(node.where)) if node.where else None,
    }


def _encode_target(node: Node, ids: dict) -> Any:
    if node.op == "call_function":
        return allowlist.name_of(node.target)
    if node.op in ("getattr", "setattr", "call_method"):
        return allowlist.attribute(node.op, node.target)
    if node.op in ("trace", "iter"):
        return ids[id(node.target.graph if node.op == "trace" else node.target)]
    return node.target


def remote_name(model: Any) -> str:
    """The name a model is hosted under; only named models can run remotely."""
    name = getattr(model, "_remote_name", None)
    if name is None:
        raise WireError("This model has no name a server could host it under: build it from a repo id "
                        "or with nnglass.models.smollm2() to run it remotely.")
    return name


# -- server side: request -> runnable graphs ---------------------------------------------------------
class Job:
    """A decoded request, ready to run on hosted models."""

    def __init__(self, data: dict, models: Callable[[str], Any]) -> None:
        check_version(data)
        self.models = models
        self.decode = Decoder(data.get("tensors", ""), ref=self._node)
        self.graphs: list[Graph] = []
        self.nodes: list[list[Node]] = []
        self._shells(data["graphs"])
        self._fill(data["graphs"])
        self.inputs = self.decode(data["inputs"]) if "inputs" in data else None

    def _node(self, ref: Any) -> Node:
        try:
            g, i = ref
            return self.nodes[g][i]
        except (TypeError, ValueError, IndexError) as error:
            raise WireError(f"bad node reference {ref!r:.40}") from error

    def _shells(self, graphs: list[dict]) -> None:
        """Create every graph and node first, so references can point anywhere."""
        for spec in graphs:
            parent = spec["parent"]
            if parent is not None and not 0 <= parent < len(self.graphs):
                raise WireError("a graph's parent must come before it")
            graph = Graph(parent=None if parent is None else self.graphs[parent], sequential=bool(spec["sequential"]))
            graph.building = False
            self.graphs.append(graph)
            self.nodes.append([_shell(graph, n) for n in spec["nodes"]])

    def _fill(self, graphs: list[dict]) -> None:
        """Restore each trace's tracer, then every node's target, args and dependencies."""
        for graph, spec in zip(self.graphs, graphs):
            owner = spec["owner"]
            if owner.get("kind") == "trace":
                model = self.models(owner["model"])
                graph.owner = Tracer.restore(model, graph, int(owner["invokes"]), _method(owner["method"]),
                                             self.decode(owner["call_kwargs"]))
        for graph, spec in zip(self.graphs, graphs):
            for node, node_spec in zip(graph.nodes, spec["nodes"]):
                self._fill_node(node, node_spec)

    def _fill_node(self, node: Node, spec: dict) -> None:
        node.args = self.decode(spec["args"])
        node.kwargs = self.decode(spec["kwargs"])
        if type(node.args) is not tuple or type(node.kwargs) is not dict:
            raise WireError(f"node {node.name}: args must be a tuple and kwargs a dict")
        node.nested = True
        allowlist.check_node(node.op, spec["target"], node.args, node.kwargs)  # capabilities: keywords, scopes
        node.target = self._target(node, spec["target"])
        node.deps = [self._node(ref) for ref in spec["deps"]]
        for dep in node.deps:
            dep.users.append(node)

    def _target(self, node: Node, target: Any) -> Any:
        op = node.op
        if op == "call_function":
            return allowlist.function(target)
        if op in ("getattr", "setattr", "call_method"):
            return allowlist.attribute(op, target)
        if op in ("trace", "iter"):
            graph = self.graphs[int(target)]
            return graph.owner if op == "trace" else graph
        if op in _MODULE_OPS:
            return _module_path(node, target)
        if target is not None and not isinstance(target, str):
            raise WireError(f"node {node.name}: unexpected target")
        return target

    def run(self) -> Any:
        """Run the request: a trace on its model, or a session in order."""
        from ..intervention.session import run_session
        root = self.graphs[0]
        if isinstance(root.owner, Tracer):
            return root.owner.execute(self.inputs)
        return run_session(root)

    def results(self) -> dict:
        """The saved values, encoded for the way back."""
        return results(self.graphs[0])


def _shell(graph: Graph, spec: dict) -> Node:
    op = spec.get("op")
    if op not in _PLAIN_OPS:
        raise WireError(f"unknown node op {op!r:.40}")
    where = spec.get("where")
    node = Node(op, None, (), {}, graph, [], True,
                (str(where[0]), int(where[1])) if where else None, spec.get("invoke"))
    node.saved = bool(spec.get("saved"))
    graph.nodes.append(node)
    return node


def _method(name: str) -> str:
    if name not in ("_execute", "_generate"):
        raise WireError(f"unknown run method {name!r:.40}")
    return name


def _module_path(node: Node, path: Any) -> str:
    graph = node.graph
    while graph is not None and not isinstance(graph.owner, Tracer):
        graph = graph.parent
    if graph is None or not isinstance(path, str) or path not in graph.owner.model._modules_by_path:
        raise WireError(f"node {node.name}: the model has no module {path!r:.80}")
    return path


def check_version(data: dict) -> None:
    """Refuse requests in a wire format this server cannot read."""
    if data.get("wire") != WIRE_VERSION:
        raise WireError(f"this server reads wire format {WIRE_VERSION} (nnglass {__version__}); the request "
                        f"uses wire format {data.get('wire')!r:.20} (nnglass {data.get('nnglass')!r:.20}). "
                        f"Install a matching nnglass version.")


# -- both sides: saved values ---------------------------------------------------------------------
def results(root: Graph) -> dict:
    """The saved values of every graph under root, by [graph, node] position."""
    encode = Encoder()
    values = []
    for g, graph in enumerate(root.walk()):
        for node in graph.nodes:
            if node.saved and node.value.__class__.__name__ != "_Empty":
                values.append([g, node.index, encode(node.value)])
    return {"values": values, "tensors": encode.blob()}


def apply_results(context: Any, data: dict) -> None:
    """Give the client's saved proxies the values the server computed."""
    graphs = context.graph.walk()
    decode = Decoder(data.get("tensors", ""))
    for g, index, value in data["values"]:
        graphs[g].nodes[index].value = decode(value)
