"""Serialize: intervention graphs to JSON and back (no pickle, no code), and their saved results."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

from .. import __version__
from ..intervention.backend import run_experiment
from ..intervention.source import ensure
from ..tracing.compile import variables
from ..tracing.graph import Graph
from ..tracing.node import OWN_ARGS, Node, location
from ..tracing.patching import originals
from ..tracing.proxy import Proxy
from . import allowlist
from .allowlist import WireError
from .values import Decoder, Encoder

WIRE_VERSION = 2
_MODULE_OPS = ("output", "inputs", "call_module", "skip_module", "parameter")
_PLAIN_OPS = {"getattr", "setattr", "call_method", "call_function", "input", "current", "swap", "grad",
              "backward", "log", "cond", "pick", "fired", "stop", "exit", "item", "trace", "iter", "invoke"} | set(_MODULE_OPS)
_KINDS = ("trace", "session", "loop")
_METHODS = ("forward", "generate")


# -- client side: a trace or session -> request -----------------------------------------------------
def request(recorder: Any, unnamed: str | None = None) -> dict:
    """The JSON request for a finished trace or session (refuses what the server may not run).

    `unnamed`: the name to send for a model that has none (`remote="local"` runs it here).
    """
    graphs = recorder.experiment.graphs
    encode = Encoder(ref=_ref)
    body = {"nnglass": __version__, "wire": WIRE_VERSION,
            "graphs": [_encode_graph(g, encode, unnamed) for g in graphs]}
    body["tensors"] = encode.blob()
    return body


def _ref(node: Node) -> dict:
    return {"$node": [node.graph.id, node.index]}


def saved_names(recorder: Any) -> dict:
    """The with-block's variables that hold saved proxies (alone, or in lists, tuples and dicts), by name,
    each proxy as a reference to its node: the server sends them back, so a result can be read by name."""
    encode = Encoder(ref=_ref)
    names = {}
    for name, value in variables(recorder).items():
        nodes = _saved_nodes(value, recorder.experiment)
        if nodes is not None:
            names[name] = encode(nodes)
    return names


def _saved_nodes(value: Any, experiment: Any, depth: int = 0) -> Any:
    """value with each saved proxy of the experiment as its node; None if it holds anything else, or nothing."""
    if isinstance(value, Proxy):
        return value.node if value.experiment is experiment and value.node.saved else None
    kind = type(value)
    if depth >= 4 or kind not in (list, tuple, dict) or not value:
        return None
    items = value.items() if kind is dict else enumerate(value)
    nodes = {key: _saved_nodes(item, experiment, depth + 1) for key, item in items}
    if any(node is None for node in nodes.values()):
        return None
    return nodes if kind is dict else kind(nodes.values())


def _encode_graph(graph: Graph, encode: Encoder, unnamed: str | None = None) -> dict:
    meta = dict(graph.meta)
    if graph.kind == "trace":
        meta["model"] = remote_name(meta.get("model") or unnamed)
    if "call_kwargs" in meta:
        meta["call_kwargs"] = encode(meta["call_kwargs"])
    return {
        "parent": None if graph.parent is None else graph.parent.id,
        "kind": graph.kind,
        "meta": meta,
        "owner": None if graph.owner is None else [graph.owner.graph.id, graph.owner.index],
        "free": [[n.graph.id, n.index] for n in graph.free],
        "exports": [[n.graph.id, n.index] for n in graph.exports],
        "nodes": [_encode_node(node, encode) for node in graph.nodes],
    }


def _encode_node(node: Node, encode: Encoder) -> dict:
    return {
        "op": node.op,
        "target": _encode_target(node),
        "args": encode(node.args),
        "kwargs": encode(node.kwargs),
        "deps": [d.index for d in node.deps],
        "invoke": node.invoke,
        "saved": node.saved,
        "where": list(location(node.where)) if node.where else None,
    }


def _encode_target(node: Node) -> Any:
    if node.op == "call_function":
        return allowlist.name_of(originals().get(node.target, node.target))
    if node.op in ("getattr", "setattr", "call_method"):
        return allowlist.attribute(node.op, node.target)
    return node.target


def remote_name(name: Any) -> str:
    """The name a model is hosted under; only named models can run remotely."""
    if not isinstance(name, str):
        raise WireError("This model has no name a server could host it under: build it from a repo id "
                        "or with nnglass.models.smollm2() to run it remotely.")
    return name


# -- server side: request -> runnable graphs ---------------------------------------------------------
class Job:
    """A decoded request, ready to run on hosted models."""

    def __init__(self, data: dict, models: Callable[[str], Any]) -> None:
        check_version(data)
        self.data = data  # the request as it came (what batching merges with other jobs' requests)
        self.models = models
        self.names = data.get("names") or {}  # saved values by the client's variable names, sent back as given
        self.decode = Decoder(data.get("tensors", ""), ref=self._node)
        self.graphs: list[Graph] = []
        self.results: dict[Node, Any] = {}
        specs = data["graphs"]
        if not isinstance(specs, list) or not specs:
            raise WireError("a request needs at least one graph")
        self._shells(specs)
        for graph, spec in zip(self.graphs, specs):
            self._fill(graph, spec)

    def _node(self, ref: Any) -> Node:
        try:
            g, i = ref
            return self.graphs[int(g)].nodes[int(i)]
        except (TypeError, ValueError, IndexError) as error:
            raise WireError(f"bad node reference {ref!r:.40}") from error

    def _shells(self, specs: list[dict]) -> None:
        """Create every graph and node first, so references can point anywhere."""
        for spec in specs:
            parent = spec.get("parent")
            if parent is not None and not (type(parent) is int and 0 <= parent < len(self.graphs)):
                raise WireError("a graph's parent must come before it")
            kind = spec.get("kind")
            if kind not in _KINDS or (kind == "loop" and parent is None) or (parent is None) != (not self.graphs):
                raise WireError(f"bad graph kind {kind!r:.20} (the first graph is the only one without a parent)")
            graph = Graph(len(self.graphs), None if parent is None else self.graphs[parent], kind, {})
            self.graphs.append(graph)
            for node_spec in spec["nodes"]:
                _shell(graph, node_spec)

    def _fill(self, graph: Graph, spec: dict) -> None:
        """Restore a graph's meta, links and every node's target, args and dependencies."""
        graph.meta = self._meta(graph, spec.get("meta") or {})
        owner = spec.get("owner")
        graph.owner = None if owner is None else self._node(owner)
        graph.free = {self._node(ref) for ref in spec.get("free", ())}
        graph.exports = {self._node(ref) for ref in spec.get("exports", ())}
        for node, node_spec in zip(graph.nodes, spec["nodes"]):
            self._fill_node(graph, node, node_spec)

    def _meta(self, graph: Graph, meta: dict) -> dict:
        if graph.kind == "session" and isinstance(meta.get("model"), str):
            return {"model": self.models(meta["model"])}
        if graph.kind != "trace":
            return {}
        method = meta.get("method", "forward")
        if method not in _METHODS:
            raise WireError(f"unknown run method {method!r:.40}")
        model = self.models(remote_name(meta.get("model")))
        call_kwargs = self.decode(meta.get("call_kwargs", {"$dict": []}))
        if not isinstance(call_kwargs, dict):
            raise WireError("call_kwargs must be a dict")
        return {"model": model, "method": method, "call_kwargs": call_kwargs, "shared": meta.get("shared") is True}

    def _fill_node(self, graph: Graph, node: Node, spec: dict) -> None:
        node.args = self.decode(spec["args"])
        node.kwargs = self.decode(spec["kwargs"])
        if type(node.args) is not tuple or type(node.kwargs) is not dict:
            raise WireError(f"node {node.name}: args must be a tuple and kwargs a dict")
        allowlist.check_node(node.op, spec["target"], node.args, node.kwargs)  # capabilities: keywords, scopes
        node.target = self._target(graph, node, spec["target"])
        for index in spec["deps"]:
            if not (type(index) is int and 0 <= index < len(graph.nodes)):
                raise WireError(f"node {node.name}: bad dependency {index!r:.20}")
            graph.depend(node, graph.nodes[index])

    def _target(self, graph: Graph, node: Node, target: Any) -> Any:
        op = node.op
        if op == "call_function":
            return allowlist.function(target)
        if op in ("getattr", "setattr", "call_method"):
            return allowlist.attribute(op, target)
        if op in ("trace", "iter"):
            if not (type(target) is int and 0 <= target < len(self.graphs)) or self.graphs[target].parent is not graph:
                raise WireError(f"node {node.name}: bad subgraph {target!r:.20}")
            return target
        if op in _MODULE_OPS:
            return _module_path(graph, node, target)
        if op == "invoke":
            if type(target) is not int:
                raise WireError(f"node {node.name}: bad invoke {target!r:.20}")
            return target
        if target is not None and not isinstance(target, str):
            raise WireError(f"node {node.name}: unexpected target")
        return target

    def run(self) -> None:
        """Run the request: a trace on its model, or a session in order."""
        root = self.graphs[0]
        model = root.meta.get("model")
        modules = None if model is None else model._modules_by_path
        run_experiment(root, self.graphs, self.results, lambda graph: graph.meta["model"], modules)

    def encoded_results(self) -> dict:
        """The saved values, encoded for the way back (with the names the client gave them)."""
        return {**results(self.results), "names": self.names}


def _shell(graph: Graph, spec: dict) -> Node:
    op = spec.get("op")
    if op not in _PLAIN_OPS:
        raise WireError(f"unknown node op {op!r:.40}")
    where = spec.get("where")
    invoke = spec.get("invoke")
    if invoke is not None and type(invoke) is not int:
        raise WireError("a node's invoke must be an integer")
    node = graph.create_node(op, None, (), {}, [], () if op in OWN_ARGS else None,
                             (str(where[0]), int(where[1])) if where else None, invoke)
    node.saved = bool(spec.get("saved"))
    return node


def _module_path(graph: Graph, node: Node, path: Any) -> str:
    trace = graph
    while trace is not None and trace.kind != "trace":
        trace = trace.parent
    model = None if trace is None else trace.meta.get("model")
    if model is None:
        return path if isinstance(path, str) else ""
    ensure(model._modules_by_path, path)  # a `.source` point: made on the server's own copy
    if not isinstance(path, str) or path not in model._modules_by_path:
        raise WireError(f"node {node.name}: the model has no module {path!r:.80}")
    return path


def check_version(data: dict) -> None:
    """Refuse requests in a wire format this server cannot read."""
    if data.get("wire") != WIRE_VERSION:
        raise WireError(f"this server reads wire format {WIRE_VERSION} (nnglass {__version__}); the request "
                        f"uses wire format {data.get('wire')!r:.20} (nnglass {data.get('nnglass')!r:.20}). "
                        f"Install a matching nnglass version.")


# -- both sides: saved values ---------------------------------------------------------------------
def results(saved: dict) -> dict:
    """Saved values by [graph, node] position."""
    encode = Encoder()
    values = [[node.graph.id, node.index, encode(value)] for node, value in saved.items()]
    return {"values": values, "tensors": encode.blob()}


def saved_values(data: dict) -> dict[tuple[int, int], Any]:
    """The saved values of a result, by (graph, node) position."""
    decode = Decoder(data.get("tensors", ""))
    return {(g, index): decode(value) for g, index, value in data["values"]}


def apply_results(recorder: Any, data: dict, values: dict[tuple[int, int], Any] | None = None) -> None:
    """Give the client's saved proxies the values the server computed (`values`: those of data, decoded)."""
    experiment = recorder.experiment
    for (g, index), value in (saved_values(data) if values is None else values).items():
        experiment.results[experiment.graphs[g].nodes[index]] = value


def by_name(data: dict, values: dict[tuple[int, int], Any]) -> dict[str, Any]:
    """The saved values by the variable names the request gave them (a name whose value never ran is left out)."""
    decode = Decoder("", ref=lambda ref: values[tuple(ref)])
    named = {}
    for name, refs in (data.get("names") or {}).items():
        with contextlib.suppress(KeyError, TypeError, WireError):
            named[name] = decode(refs)
    return named
