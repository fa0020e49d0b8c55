"""Fake: shapes and dtypes of values in a trace, from one forward pass on fake tensors (scan, validate)."""
from __future__ import annotations

import collections
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..tracing.interpreter import Run
from ..tracing.local import suspended
from ..tracing.node import Node
from ..tracing.walk import map_leaves
from .interleaver import EVENTS, Interleaver
from .source import activate

__all__ = ["Fake", "record_forward", "ScanCache"]


def record_forward(modules: dict[str, torch.nn.Module], forward: Any, args: tuple, kwargs: dict,
                   mode: FakeTensorMode) -> dict:
    """Every module's inputs and output per call, as fake tensors: from one real forward when the
    weights are loaded (its buffers and random state restored after), else from a fake forward."""
    records: dict[tuple[str, str, int], Any] = {}
    calls: dict[tuple[str, str], int] = {}
    model = modules[""]
    real = not any(p.is_meta for p in model.parameters())
    fake = (lambda v: _Meta(v) if isinstance(v, torch.Tensor) else v) if real else (lambda v: v)

    def keep(path: str, kind: str, value: Any) -> None:
        call = calls[(path, kind)] = calls.get((path, kind), -1) + 1
        records[(path, kind, call)] = map_leaves(value, fake)

    handles: list[Any] = activate(modules, modules)  # forwards with points run rewritten
    for path, module in modules.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, path=path: keep(path, "inputs", (a, k)), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, o, path=path: keep(path, "output", o)))
    try:
        with suspended():
            if real:
                _run_without_effects(model, forward, args, kwargs)
            else:
                with mode:
                    inputs = map_leaves((args, kwargs), lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v)
                    forward(*inputs[0], **inputs[1])
    finally:
        for handle in handles:
            handle.remove()
    return records


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

    def get(self, key: Any, make: Any) -> dict:
        """The records for key, made with make() when missing."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        records = self.entries[key] = make()
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return records

    def clear(self) -> None:
        self.entries.clear()


class Fake(Interleaver):
    """Evaluates graph nodes on fake values: the ops of the interleaver, without running the model."""

    def __init__(self, trace: Any) -> None:
        super().__init__(trace.graph, Run(trace.experiment.graphs, {}), trace.model._modules_by_path)
        self.trace = trace
        self.mode = trace.model._fake_mode
        self.records: dict[int | None, dict] = {}
        self.values: dict[Node, Any] = {}

    def value(self, node: Node) -> Any:
        """The fake value of node (computing the nodes it depends on first)."""
        order = self._missing(node)
        for item in order:  # module records first: preparing inputs must not see fake tensors
            if item.op in EVENTS:
                self.prepare_invoke(item.invoke)
        with suspended(), self.mode:
            for item in order:
                self.values[item] = self._evaluate(item)
        return self.values[node]

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

    def prepare_invoke(self, invoke: int | None) -> dict:
        """The module records of one invoke's inputs (or of the whole batch)."""
        records = self.records.get(invoke)
        if records is None:
            args, kwargs = self.trace.inputs_of(invoke)
            records = self.records[invoke] = self.trace.model._scan_records(args, kwargs)
        return records

    def _event(self, node: Node) -> Any:
        records = self.prepare_invoke(node.invoke)
        call = max(node.args[0], 0)
        if (node.target, node.op, call) not in records:
            raise ValueError(f"Module '{node.target}' was not called {call + 1} time(s) in the scan, "
                             f"so its {node.op} has no shape.")
        mode = self.mode
        return map_leaves(records[(node.target, node.op, call)],
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

    def stop(self, node: Node, *_: Any) -> None:
        return None

    def iter(self, node: Node, iterable: Any) -> None:
        return None

    def trace(self, node: Node, *_: Any) -> None:
        return None
