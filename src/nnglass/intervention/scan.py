"""Scan: shapes and dtypes of every value in a trace, from a forward pass on fake tensors."""
from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..tracing.contexts import suspended
from ..tracing.node import Node, map_nested
from .interleaver import EVENTS, Interleaver


def record_forward(model: Any, args: tuple, kwargs: dict, mode: FakeTensorMode) -> dict:
    """Run the model on fake copies of the inputs; record every module's inputs and output per call."""
    records: dict[tuple[str, str, int], Any] = {}
    calls: dict[tuple[str, str], int] = {}

    def keep(path: str, kind: str, value: Any) -> None:
        call = calls[(path, kind)] = calls.get((path, kind), -1) + 1
        records[(path, kind, call)] = value

    handles = []
    for path, module in model._modules_by_path.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, path=path: keep(path, "inputs", (a, k)), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, o, path=path: keep(path, "output", o)))
    try:
        with suspended(), mode:
            fake = map_nested((args, kwargs), lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v)
            model._execute(*fake[0], **fake[1])
    finally:
        for handle in handles:
            handle.remove()
    return records


class Scan(Interleaver):
    """Evaluates graph nodes on fake values: the ops of the interleaver, without the model."""

    def __init__(self, tracer: Any) -> None:
        super().__init__(tracer.graph, tracer.model._modules_by_path, [], 0)
        self.tracer = tracer
        self.mode = tracer.model._fake_mode
        self.records: dict[int | None, dict] = {}
        self.values: dict[Node, Any] = {}

    def value(self, node: Node) -> Any:
        """The fake value of node (computing the nodes it depends on first)."""
        order = self._missing(node)
        for item in order:  # module records first: preparing inputs must not see fake tensors
            if item.op in EVENTS:
                self.prepare(item.invoke)
        with suspended(), self.mode:
            for item in order:
                self.values[item] = self._evaluate(item)
        return self.values[node]

    def _missing(self, node: Node) -> list[Node]:
        order: list[Node] = []
        stack, seen = [node], set()
        while stack:
            item = stack.pop()
            if item in self.values or item in seen:
                continue
            seen.add(item)
            order.append(item)
            stack.extend(item.deps)
        return sorted(order, key=lambda n: n.index)

    def _evaluate(self, node: Node) -> Any:
        if node.op in EVENTS:
            return self._event(node)
        values = self.values
        args = map_nested(node.args, lambda v: values[v] if type(v) is Node else v)
        kwargs = map_nested(node.kwargs, lambda v: values[v] if type(v) is Node else v)
        return getattr(self, node.op)(node, *args, **kwargs)

    def prepare(self, invoke: int | None) -> dict:
        """The module records of one invoke's inputs (scanned once per input signature)."""
        records = self.records.get(invoke)
        if records is None:
            args, kwargs = self.tracer.inputs_of(invoke)
            records = self.records[invoke] = self.tracer.model._scan_records(args, kwargs)
        return records

    def _event(self, node: Node) -> Any:
        records = self.prepare(node.invoke)
        call = max(node.args[0], 0)
        if (node.target, node.op, call) not in records:
            raise ValueError(f"Module '{node.target}' was not called {call + 1} time(s) in the scan, "
                             f"so its {node.op} has no shape.")
        return records[(node.target, node.op, call)]

    # -- ops that have no meaning on fake values ---------------------------------------------------
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
