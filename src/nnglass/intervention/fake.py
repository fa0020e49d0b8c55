"""Fake: shapes and dtypes of values in a trace, from one forward pass on fake tensors (scan, validate)."""
from __future__ import annotations

import collections
from collections.abc import Collection
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..tracing.interpreter import Run
from ..tracing.local import suspended
from ..tracing.node import Node
from ..tracing.walk import map_leaves
from .interleaver import EVENTS, Interleaver
from .source import activate

__all__ = ["Fake", "record_forward", "ScanCache", "Records"]


class Records(dict):
    """A scan's module records by (path, kind, call); `complete` once its forward ran to the end."""

    complete = False

    def hold(self, needed: Collection | None) -> bool:
        """Whether these records answer for needed (None: every record); complete ones answer misses too."""
        return self.complete or needed is not None and all(key in self for key in needed)


class _Enough(BaseException):
    """Raised by a scan's hook once every needed record is kept (not an Exception: model code lets it pass)."""


class _Recorder:
    """The hooks' side of a scan: keeps each call's inputs and output, stops once the needed ones are kept."""

    def __init__(self, needed: Collection | None, real: bool) -> None:
        self.records = Records()
        self.calls: dict[tuple[str, str], int] = {}
        self.left = None if needed is None else set(needed)
        self.convert = (lambda v: _Meta(v) if isinstance(v, torch.Tensor) else v) if real else (lambda v: v)

    def keep(self, path: str, kind: str, value: Any) -> None:
        call = self.calls[(path, kind)] = self.calls.get((path, kind), -1) + 1
        self.records[(path, kind, call)] = map_leaves(value, self.convert)
        if self.left is not None:
            self.left.discard((path, kind, call))
            if not self.left:
                raise _Enough


def record_forward(modules: dict[str, torch.nn.Module], forward: Any, args: tuple, kwargs: dict,
                   mode: FakeTensorMode, needed: Collection | None = None) -> Records:
    """Every module's inputs and output per call, as fake tensors: from one real forward when the
    weights are loaded (its buffers and random state restored after), else from a fake forward.

    With `needed` ((path, kind, call) keys) the forward stops once those are kept: the records are partial.
    """
    model = modules[""]
    real = not any(p.is_meta for p in model.parameters())
    recorder = _Recorder(needed, real)
    handles: list[Any] = activate(modules, modules)  # forwards with points run rewritten
    for path, module in modules.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, path=path: recorder.keep(path, "inputs", (a, k)), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, o, path=path: recorder.keep(path, "output", o)))
    try:
        with suspended():
            _run(model, forward, args, kwargs, mode if not real else None)
        recorder.records.complete = True
    except _Enough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return recorder.records


def _run(model: torch.nn.Module, forward: Any, args: tuple, kwargs: dict, mode: FakeTensorMode | None) -> None:
    """Run forward for real (no effects kept), or on fake copies of the inputs in mode."""
    if mode is None:
        _run_without_effects(model, forward, args, kwargs)
        return
    with mode:
        inputs = map_leaves((args, kwargs), lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v)
        forward(*inputs[0], **inputs[1])


def _run_without_effects(model: torch.nn.Module, forward: Any, args: tuple, kwargs: dict) -> None:
    """Run forward with no gradient, then put back the buffers (e.g. batch-norm statistics) and random state."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            forward(*args, **kwargs)
        finally:
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


class _Meta:
    """What a scan keeps of a real tensor: plain values (shape, strides, dtype, device), no tensor.

    A tensor of another layout than strided (sparse) has no strides: it is kept on the meta device.
    """

    __slots__ = ("shape", "strides", "dtype", "device", "requires_grad", "meta")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape, self.dtype, self.device = tensor.shape, tensor.dtype, tensor.device
        self.requires_grad = tensor.requires_grad
        strided = tensor.layout is torch.strided
        self.strides = tensor.stride() if strided else None
        self.meta = None if strided else tensor.detach().to("meta")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def fake(self, mode: FakeTensorMode) -> torch.Tensor:
        """A fake tensor like the recorded one, made on first use."""
        if self.meta is not None:
            made = mode.fake_tensor_converter.from_meta_and_device(mode, self.meta, self.device)
            return made.requires_grad_(self.requires_grad) if self.dtype.is_floating_point else made
        with mode:
            return torch.empty_strided(self.shape, self.strides, dtype=self.dtype, device=self.device,
                                       requires_grad=self.requires_grad)


class ScanCache:
    """Module records per input signature, the most recent `size` of them."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: collections.OrderedDict[Any, dict] = collections.OrderedDict()

    def get(self, key: Any, make: Any, needed: Collection | None = None) -> Records:
        """The records for key that hold needed (None: all), made with make(needed) when missing;
        an entry that stopped short of them is replaced by a scan to the end."""
        records = self.entries.get(key)
        if records is None:
            records = make(needed)
        elif not records.hold(needed):
            records = make(None)
        self.entries[key] = records
        self.entries.move_to_end(key)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return records

    def clear(self) -> None:
        self.entries.clear()


def record_key(node: Node) -> tuple[str, str, int]:
    """The (path, kind, call) of the record an event node reads."""
    return node.target, node.op, max(node.args[0], 0)


def _needed(order: list[Node]) -> dict[int | None, set]:
    """The record keys the event nodes among order read, per invoke."""
    needed: dict[int | None, set] = {}
    for item in order:
        if item.op in EVENTS:
            needed.setdefault(item.invoke, set()).add(record_key(item))
    return needed


class Fake(Interleaver):
    """Evaluates graph nodes on fake values: the ops of the interleaver, without running the model."""

    def __init__(self, trace: Any) -> None:
        super().__init__(trace.graph, Run(trace.experiment.graphs, {}), trace.model._modules_by_path)
        self.trace = trace
        self.mode = trace.model._fake_mode
        self.records: dict[int | None, Records] = {}
        self.values: dict[Node, Any] = {}

    def value(self, node: Node) -> Any:
        """The fake value of node (computing the nodes it depends on first)."""
        order = self._missing(node)
        self._prepare(order)  # records first: preparing inputs must not see fakes
        with suspended(), self.mode:
            for item in order:
                self.values[item] = self._evaluate(item)
        return self.values[node]

    def saved(self) -> dict[Node, Any]:
        """The fake values of the graph's saved nodes, after the nodes that use them (a cache's entries) ran.

        Like a run, it leaves out the nodes that need a module call the scan did not see (a ModuleList's output).
        """
        nodes = self.graph.nodes
        saved = [node for node in nodes if node.saved]
        users = [nodes[index] for index in sorted({index for node in saved for index in node.users})]
        for node in users + saved:
            if self._prepare(self._missing(node)):
                self.value(node)
        return {node: self.values[node] for node in saved if node in self.values}

    def _prepare(self, order: list[Node]) -> bool:
        """Prepare the records the event nodes among order read; whether the scan saw every one of them."""
        seen = [needed <= self.prepare_invoke(invoke, needed).keys() for invoke, needed in _needed(order).items()]
        return all(seen)  # a list, not a generator: every invoke is prepared

    def _missing(self, node: Node) -> list[Node]:
        order: list[Node] = []
        todo, seen = [node], set()
        while todo:
            item = todo.pop()
            if item in self.values or item in seen:
                continue
            seen.add(item)
            order.append(item)
            todo.extend(dep for dep in item.deps if dep.graph is node.graph)
        return sorted(order, key=lambda n: n.index)

    def _evaluate(self, node: Node) -> Any:
        if node.op in EVENTS:
            return self._event(node)
        values = self.values
        lookup = lambda v: values.get(v, v) if type(v) is Node else v  # noqa: E731
        args, kwargs = map_leaves(node.args, lookup), map_leaves(node.kwargs, lookup)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        return getattr(self, node.op)(node, *args, **kwargs)

    def prepare_invoke(self, invoke: int | None, needed: Collection | None = None) -> Records:
        """The module records of one invoke's inputs (or of the whole batch): the needed ones, else all."""
        if self.trace.validate:
            needed = None  # validation evaluates every node: one scan to the end
        records = self.records.get(invoke)
        if records is None or not records.hold(needed):
            args, kwargs = self.trace.inputs_of(invoke)
            trace = self.trace  # a run as the trace's own (generate: every step, logits of the last token)
            records = self.records[invoke] = trace.model._scan_records(args, kwargs, needed, trace.method,
                                                                       trace.call_kwargs)
        return records

    def _event(self, node: Node) -> Any:
        """A module's recorded input or output, as a fake (`value` prepared the invoke's records)."""
        key = record_key(node)
        records = self.records[node.invoke]
        if key not in records:
            hint = (" (a generate call is scanned step by step where the weights are loaded, else as its "
                    "first step only, e.g. for remote=True)" if self.trace.method == "generate" else "")
            raise ValueError(f"Module '{node.target}' was not called {key[2] + 1} time(s) in the scan{hint}, "
                             f"so its {node.op} has no shape.")
        mode = self.mode
        return map_leaves(records[key],
                          lambda v: v.fake(mode) if isinstance(v, _Meta) else v)

    # -- ops that have no meaning on fake values ---------------------------------------------------
    def parameter(self, node: Node, name: str) -> Any:
        module = self.trace.model._modules_by_path[node.target]
        return self.mode.from_tensor(getattr(module, name))

    def grad(self, node: Node, tensor: torch.Tensor, backward: int | None = None) -> Any:
        return torch.zeros_like(tensor)

    def backward(self, node: Node, *args: Any, **kwargs: Any) -> None:
        return None

    def log(self, node: Node, *values: Any) -> None:
        return None

    def cond(self, node: Node, condition: Any) -> bool:
        return True

    def pick(self, node: Node, test: Any, then: Any, otherwise: Any) -> Any:
        return then  # both branches were recorded: either value has the shapes the scan can tell

    def fired(self, node: Node, *marks: Node) -> bool:
        return True

    def stop(self, node: Node, *_: Any) -> None:
        return None

    def iter(self, node: Node, iterable: Any) -> None:
        return None

    def trace(self, node: Node, *_: Any) -> None:
        return None
