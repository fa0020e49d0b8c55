"""Batching: queued single-trace jobs for one model run as the invokes of one forward, each in its own rows.

The merge works on the wire (request dicts), so it does not matter where the merged request runs. Each
job's nodes keep their order; node references, dependencies, invoke numbers, subgraph ids and tensor
names move by the job's offsets, and a `Part` remembers where each job went so its saved values can be
handed back to it alone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, NamedTuple, Optional

import torch

from ..remote.schema import JobStatus
from ..remote.values import load_blob, save_blob
from ..tracing.walk import leaves, map_leaves
from .budget import LimitExceeded
from .limits import Limits, check_result

__all__ = ["Group", "Grouping", "Part", "fillers", "fits", "group_key", "merge", "shares_forward", "split"]

# Ops whose effect stays in the rows of the invoke they belong to (module calls only without their hooks).
_CONFINED_OPS = {"invoke", "output", "inputs", "input", "current", "swap", "getattr", "call_method",
                 "call_function", "call_module", "cond", "pick", "fired", "iter", "item"}
# Functions and methods that draw random numbers: alone, a forked job starts from the server's generator
# state; sharing a forward, it would get the draws after the other jobs' draws.
_RANDOM = re.compile(r"rand|normal|bernoulli|multinomial|dropout|seed|uniform|exponential|cauchy|geometric"
                     r"|poisson")


def shares_forward(data: dict, greedy: bool = True) -> bool:
    """Whether a request may run in one forward with other jobs' requests, its rows its own.

    Yes only for a lone trace on the model it queues for (loop bodies allowed, no session, no nested
    trace) that runs `forward`, or `generate` for a fixed number of new tokens without sampling (only
    `max_new_tokens` equal to `min_new_tokens`, maybe `do_sample=False`; `greedy`: whether the model's
    own generation settings are one beam, no sampling) since the rows of a batch stop generating
    together; whose invokes are numbered
    0, 1, ... in order and take inputs written in the request; whose run keywords hold no tensors; and
    whose every other node lies inside one of its invokes (none reads or edits the whole batch) with an op
    of `_CONFINED_OPS`: no early stop, exit, log line, backward pass, gradient, parameter read or edit,
    module skip, attribute write, module call that fires the module's hooks, or random draw.
    """
    root, loops = data["graphs"][0], data["graphs"][1:]
    meta = root.get("meta") or {}
    if root["kind"] != "trace" or meta.get("model") != data["model"] or any(g["kind"] != "loop" for g in loops):
        return False
    keywords = meta.get("call_kwargs")
    if _has_tag(keywords, "$tensor", "$node") or not _same_steps(meta.get("method"), keywords, greedy):
        return False
    invokes = [node for node in root["nodes"] if node["op"] == "invoke"]
    if [node.get("target") for node in invokes] != list(range(len(invokes))) or not invokes:
        return False
    if any(node.get("invoke") is not None or _has_tag(node["args"], "$node") for node in invokes):
        return False
    return all(_confined(node, len(invokes)) for graph in data["graphs"] for node in graph["nodes"]
               if node["op"] != "invoke")


def _same_steps(method: Any, keywords: Any, greedy: bool) -> bool:
    """Whether the run takes the same steps for every row: a forward, or a fixed-length greedy generation."""
    if method == "forward":
        return True
    pairs = keywords.get("$dict") if method == "generate" and isinstance(keywords, dict) and greedy else None
    if not pairs or not all(isinstance(pair[0], str) for pair in pairs):
        return False
    given = {name: value for name, value in pairs}
    steps = given.get("max_new_tokens")
    return (set(given) <= {"max_new_tokens", "min_new_tokens", "do_sample"} and type(steps) is int
            and given.get("min_new_tokens") == steps and given.get("do_sample", False) is False)


def _confined(node: dict, invokes: int) -> bool:
    """Whether one node (not an invoke) acts on its own invoke's rows only."""
    invoke = node.get("invoke")
    if node["op"] not in _CONFINED_OPS or not (type(invoke) is int and 0 <= invoke < invokes):
        return False
    if node["op"] == "call_module":
        return all(pair[0] != "hook" for pair in node["kwargs"].get("$dict", ()))
    return not (node["op"] in ("call_function", "call_method") and _RANDOM.search(str(node.get("target"))))


class Grouping(NamedTuple):
    """How a job may share a forward: jobs of equal `key` may; `rows` it adds to the batch; `sizes` of its
    inputs past the batch dimension (a shared batch must not have one of these many rows)."""

    key: Hashable
    rows: int
    sizes: frozenset[int]


def group_key(job: Any) -> Optional[Grouping]:
    """Jobs with equal keys may share a forward: same model, run keywords and input shapes; None: run alone.

    Inputs must have the same shape beyond the batch dimension: left padding to a longer prompt changes
    the last bits of a shorter one's values (attention sums over the padded keys), so it never happens.
    """
    data, root = job.data, job.graphs[0]
    model = root.meta.get("model")
    if not shares_forward(data, _greedy(model)):
        return None
    try:
        shapes, rows, sizes = _input_shapes(model, [node.args for node in root.nodes if node.op == "invoke"])
    except Exception:  # inputs the model refuses: the job runs alone and gets its own error
        return None
    meta = data["graphs"][0]["meta"]
    return Grouping((data["model"], meta.get("method"), json.dumps(meta.get("call_kwargs")), shapes), rows, sizes)


def fits(rows: int, sizes: frozenset[int]) -> bool:
    """Whether a shared batch may have `rows` rows: not one of the other sizes of its inputs (e.g. the
    sequence length) or of the model's weights. A tensor is taken for batched by its first dimension: a
    `(length,)` position tensor or a weight-sized table would otherwise be cut into the jobs' rows."""
    return rows not in sizes


def fillers(rows: int, grouping: Grouping) -> int:
    """How many filler copies of a job's rows (`grouping.rows` each) make a shared batch of `rows` fit."""
    count = 0
    while not fits(rows + count * grouping.rows, grouping.sizes):
        count += 1
    return count


def filler(data: dict) -> dict:
    """A request that only feeds rows like those of `data`: its invokes, with no other node (saves nothing)."""
    root = data["graphs"][0]
    invokes = [{**node, "deps": []} for node in root["nodes"] if node["op"] == "invoke"]
    return {**data, "graphs": [{**root, "nodes": invokes, "free": [], "exports": []}]}


def _greedy(model: Any) -> bool:
    """Whether the model generates greedily unless told otherwise: one beam, one sequence, no sampling."""
    config = getattr(getattr(model, "_model", None), "generation_config", None)
    return (not getattr(config, "do_sample", False) and (getattr(config, "num_beams", 1) or 1) == 1
            and (getattr(config, "num_return_sequences", 1) or 1) == 1)


def _input_shapes(model: Any, inputs: list[tuple]) -> tuple[str, int, frozenset[int]]:
    """What the model is given for a job's invokes together, with tensors as their shape past the batch;
    its rows; the sizes a shared batch must not have (its inputs' past the batch, the model's weights')."""
    prepared = [model._prepare_inputs(*args, **kwargs) for args, kwargs in inputs]
    args, kwargs, _, rows = model._batch(prepared)
    sizes = {size for leaf in leaves((args, kwargs)) if isinstance(leaf, torch.Tensor) for size in leaf.shape[1:]}
    sizes |= {size for tensor in [*model._model.parameters(), *model._model.buffers()] for size in tensor.shape}
    return repr(map_leaves((args, kwargs), lambda leaf: (
        ("tensor", tuple(leaf.shape[1:]), str(leaf.dtype)) if isinstance(leaf, torch.Tensor) else leaf))), rows, frozenset(sizes)


# -- merging and splitting requests ------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """Where one job went in a merged request: its trace nodes' offset and count, its loop graphs' ids."""

    nodes: int
    size: int
    graphs: int
    loops: int

    def local(self, g: int, i: int) -> Optional[tuple[int, int]]:
        """The job's own [graph, node] position of merged position (g, i); None if it is another job's."""
        if g == 0:
            return (0, i - self.nodes) if self.nodes <= i < self.nodes + self.size else None
        return (g - self.graphs + 1, i) if self.graphs <= g < self.graphs + self.loops else None


def merge(requests: list[dict]) -> tuple[dict, list[Part]]:
    """One request that runs each given request (see `shares_forward`) as invokes of one forward, and
    where each request's graphs went."""
    parts, graphs, tensors = [], [], {}
    nodes, loops, invokes = 0, 1, 0
    first = requests[0]["graphs"][0]
    root = {**first, "meta": {**first["meta"], "shared": True}, "nodes": [], "free": [], "exports": []}
    for number, data in enumerate(requests):
        trace = data["graphs"][0]
        part = Part(nodes, len(trace["nodes"]), loops, len(data["graphs"]) - 1)
        move = _Move(part, invokes, f"{number}.")
        moved = move.graph(trace, 0)
        for field in ("nodes", "free", "exports"):
            root[field] += moved[field]
        graphs += [move.graph(graph, g) for g, graph in enumerate(data["graphs"][1:], 1)]
        tensors.update({move.prefix + name: t for name, t in load_blob(data.get("tensors", "")).items()})
        parts.append(part)
        nodes, loops = nodes + part.size, loops + part.loops
        invokes += sum(node["op"] == "invoke" for node in trace["nodes"])
    return {**requests[0], "graphs": [root, *graphs], "tensors": save_blob(tensors)}, parts


def split(results: dict, parts: list[Part]) -> list[dict]:
    """Each job's own results (its saved values, only its tensors) from a merged request's results."""
    tensors = load_blob(results.get("tensors", ""))
    values: list[list] = [[] for _ in parts]
    names: list[dict] = [{} for _ in parts]
    for g, i, value in results["values"]:
        number, place = next((n, place) for n, part in enumerate(parts) if (place := part.local(g, i)))
        values[number].append([*place, value])
        names[number].update((name, tensors[name]) for name in _tensor_names(value))
    return [{"values": own, "tensors": save_blob(mine)} for own, mine in zip(values, names)]


class _Move:
    """Renumbers one job's graphs for the merged request: node positions, graph ids, invokes, tensor names."""

    def __init__(self, part: Part, invokes: int, prefix: str) -> None:
        self.part, self.invokes, self.prefix = part, invokes, prefix

    def graph_id(self, g: Optional[int]) -> Optional[int]:
        return g if g is None or g == 0 else self.part.graphs + g - 1

    def ref(self, ref: list) -> list:
        g, i = ref
        return [self.graph_id(g), i + self.part.nodes if g == 0 else i]

    def graph(self, spec: dict, g: int) -> dict:
        owner = spec.get("owner")
        return {**spec, "parent": self.graph_id(spec["parent"]), "owner": owner and self.ref(owner),
                "free": [self.ref(r) for r in spec.get("free", ())],
                "exports": [self.ref(r) for r in spec.get("exports", ())],
                "nodes": [self.node(node, g) for node in spec["nodes"]]}

    def node(self, spec: dict, g: int) -> dict:
        shift = self.part.nodes if g == 0 else 0
        node = {**spec, "args": self.value(spec["args"]), "kwargs": self.value(spec["kwargs"]),
                "deps": [d + shift for d in spec["deps"]]}
        if spec.get("invoke") is not None:
            node["invoke"] = spec["invoke"] + self.invokes
        if spec["op"] == "invoke":
            node["target"] = spec["target"] + self.invokes
        elif spec["op"] == "iter":  # a loop: its body's graph id
            node["target"] = self.graph_id(spec["target"])
        return node

    def value(self, value: Any) -> Any:
        """A wire value with its node references and tensor names moved."""
        return _rewrite(value, lambda tag, data: (
            {"$node": self.ref(data["$node"])} if tag == "$node" else {**data, "$tensor": self.prefix + data[tag]}))


def _rewrite(value: Any, tagged: Callable[[str, dict], Any]) -> Any:
    """A wire value with each `$node` and `$tensor` object replaced by `tagged(tag, object)`."""
    if type(value) is list:
        return [_rewrite(v, tagged) for v in value]
    if type(value) is not dict or not value:
        return value
    tag = next(iter(value))
    if tag in ("$node", "$tensor"):
        return tagged(tag, value)
    return {key: _rewrite(v, tagged) for key, v in value.items()}


def _tensor_names(value: Any) -> list[str]:
    """The names of the tensors a wire value refers to."""
    found: list[str] = []
    _rewrite(value, lambda tag, data: found.append(data[tag]) if tag == "$tensor" else None)
    return found


def _has_tag(value: Any, *tags: str) -> bool:
    """Whether a wire value holds an object tagged with one of `tags` (`$node`, `$tensor`)."""
    found: list[str] = []
    _rewrite(value, lambda tag, data: found.append(tag))
    return any(tag in tags for tag in found)


# -- a merged request, run as one job ------------------------------------------------------------------
class Group:
    """Jobs run as one merged request; to the hosting backend it looks like one job's record.

    `padding` filler copies of the first job's rows make the batch a size that `fits`; they save nothing.
    It has no single owner: `finish` checks each job's part against that job's own result limits. RUNNING
    reaches every job; an ERROR only marks the group failed (`failed`): its jobs then run alone, each to
    its own end.
    """

    def __init__(self, records: list[Any], limits: Limits, held: Callable[[int], int], padding: int = 0) -> None:
        requests = [record.request for record in records]
        self.request, self.parts = merge(requests + [filler(requests[0])] * padding)  # see `fits`
        self.records, self.limits, self.held = records, limits, held
        self.jobs = len(records)
        self.id = f"group-{records[0].id}"
        self.owner = None
        self.model, self.models = records[0].model, records[0].models
        self.ended = self.failed = False

    def post(self, status: JobStatus, description: str = "", **fields: object) -> None:
        """RUNNING to every job; an ERROR fails the group (unless it already ended); nothing else is posted."""
        if status is JobStatus.RUNNING:
            for record in self.records:
                record.post(status, "Your job has started running (in a forward shared with other jobs).")
        elif status is JobStatus.ERROR and not self.ended:
            self.ended = self.failed = True

    def finish(self, result: bytes) -> None:
        """Hand each job its own saved values, or its own LimitExceeded error."""
        if self.ended:
            return
        self.ended = True
        try:
            parts = split(json.loads(result), self.parts)
        except Exception:  # never leave the worker on a result it cannot split: the jobs run alone
            self.failed = True
            return
        for record, part in zip(self.records, parts):
            own = json.dumps(part, separators=(",", ":")).encode()
            try:
                check_result(self.limits, len(own), self.held(record.owner))
            except LimitExceeded as error:
                record.post(JobStatus.ERROR, str(error), error="LimitExceeded")
            else:
                record.finish(own)
