"""Interleaver: runs an intervention graph alongside a model's forward (and backward) pass."""
from __future__ import annotations

import heapq
import operator
import threading
from typing import Any, Callable

import torch

from ..tracing.executor import PINNED, WAIT, EarlyStop, Executor
from ..tracing.graph import Graph
from ..tracing.node import PENDING, Node, describe_line, map_nested

EVENTS = ("output", "inputs")
ALL_CALLS = -1
_VIEWS = {"view", "reshape", "transpose", "permute", "narrow", "select", "squeeze", "unsqueeze",
          "flatten", "unflatten", "expand", "t", "view_as", "chunk", "split", "unbind", "diagonal"}
_INPLACE_OPS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
                operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}


class CausalityError(RuntimeError):
    """An edit of a module needs a value the model produces only later."""


class Interleaver(Executor):
    """Hooks on the modules the graph references hand activations to its event nodes."""

    def __init__(self, graph: Graph, modules: dict[str, torch.nn.Module],
                 slices: list[tuple[int, int]], batch_size: int) -> None:
        super().__init__(graph)
        self.modules = modules
        self.slices = slices          # (start, size) of each invoke in the batch
        self.batch_size = batch_size
        self.narrowing = len(slices) > 1 or (bool(slices) and slices[0] != (0, batch_size))
        self.thread = threading.get_ident()
        self.events: dict[tuple[str, str], list[Node]] = {}
        self.edits: dict[Node, list[Node]] = {}
        self.calls: dict[tuple[str, str], int] = {}
        self.swaps: dict[Node, Any] = {}
        self.handles: list[Any] = []
        self.closures: dict[Node, list[Node]] = {}
        self.backward_pass: int | None = None  # index of the backward node now running
        self.busy = False             # the graph itself is calling a module: hooks stand aside

    external = frozenset({*EVENTS, "item"})

    # -- running -------------------------------------------------------------------------------
    def run(self, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Install hooks, run forward, always remove the hooks again."""
        self.index()
        self.install()
        try:
            self.start()
            self.pin_repeating()
            self.drain()
            output = None
            if not self.stop_requested:
                try:
                    output = forward(*args, **kwargs)
                except EarlyStop:
                    pass
            self.drain()
            return output
        finally:
            for handle in self.handles:
                handle.remove()
            self.handles.clear()
            self.finish()

    def index(self) -> None:
        """Group event nodes by (module, kind) and edits by the event they change."""
        for node in self.graph.nodes:
            op = node.op
            if op == "call_function" and node.target not in _INPLACE_OPS:
                continue  # the common case: not an event, not an edit
            if op in EVENTS:
                self.events.setdefault((node.target, op), []).append(node)
            elif _is_edit(node):
                anchor = _anchor(node.args[0])
                if anchor is not None:
                    self.edits.setdefault(anchor, []).append(node)

    def install(self) -> None:
        for path, kind in self.events:
            module = self.modules[path]
            if kind == "output":
                hook = self.output_hook(path)
                self.handles.append(module.register_forward_hook(hook))
            else:
                hook = self.inputs_hook(path)
                self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def output_hook(self, path: str) -> Callable[..., Any]:
        key = (path, "output")

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if self.busy or threading.get_ident() != self.thread:
                return None
            return self.fire(key, output)
        return hook

    def inputs_hook(self, path: str) -> Callable[..., Any]:
        key = (path, "inputs")

        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
            if self.busy or threading.get_ident() != self.thread:
                return None
            return self.fire(key, (args, kwargs))
        return hook

    def fire(self, key: tuple[str, str], value: Any) -> Any:
        """A module produced a value: give each matching event node its slice, run what is ready."""
        call = self.calls[key] = self.calls.get(key, -1) + 1
        fired = [n for n in self.events[key] if n.args[0] == call or n.args[0] == ALL_CALLS]
        if not fired:
            return None
        for node in fired:
            self.give(node, self.narrow(value, node.invoke))
        return self.settle(fired, value)

    def settle(self, fired: list[Node], value: Any) -> Any:
        """Run what is ready, check causality, stop if asked, then write back swapped values."""
        self.drain()
        for node in fired:
            self.check_edits(node)
        if self.stop_requested:
            raise EarlyStop()
        changed = False
        for node in fired:
            if node in self.swaps:
                value = self.merge(value, self.swaps.pop(node), node.invoke)
                changed = True
        return value if changed else None

    def give(self, node: Node, value: Any) -> None:
        """Hand an event its value; a repeating event (`.all()`) re-runs what depends on it."""
        if node.state != PENDING:
            closure = self.closures[node]
            for user in closure:
                user.state = PENDING
            node.state = PENDING
            for user in closure:
                user.remaining = sum(1 for dep in user.deps if dep.state == PENDING)
        self.complete(node, value)

    def pin_repeating(self) -> None:
        """Values that `.all()` events need on every call must outlive their first use."""
        for node in self.graph.nodes:
            if node.op in EVENTS and node.args[0] == ALL_CALLS or node.op == "grad":
                closure = _downstream(node)
                self.closures[node] = closure
                for user in closure:
                    for dep in user.deps:
                        dep.uses_left += PINNED

    def check_edits(self, event: Node) -> None:
        for edit in self.edits.get(event, ()):
            if edit.state == PENDING:
                missing = _first_missing(edit)
                raise CausalityError(
                    f"This edit cannot be applied: it changes a value when the model produces it, "
                    f"but it needs a value that the model produces only later.\n"
                    f"  the edit: {describe_line(edit.where)}\n"
                    f"  the later value: {describe_line(missing.where)}{_event_name(missing)}")

    # -- batch slices --------------------------------------------------------------------------
    def narrow(self, value: Any, invoke: int | None) -> Any:
        if invoke is None or not self.narrowing:
            return value
        start, size = self.slices[invoke]
        batch = self.batch_size
        return map_nested(value, lambda t: t[start:start + size] if _batched(t, batch) else t)

    def merge(self, full: Any, part: Any, invoke: int | None) -> Any:
        if invoke is None or not self.narrowing:
            return part
        start, size = self.slices[invoke]
        return _merge(full, part, start, size, self.batch_size)

    # -- intervention ops ------------------------------------------------------------------------
    def input(self, node: Node, inputs: tuple) -> Any:
        args, kwargs = inputs
        return args[0] if args else next(iter(kwargs.values()))

    def swap(self, node: Node, old: Any, value: Any, first: bool = False) -> None:
        event = node.args[0]
        if first:
            args, kwargs = self.swaps.get(event, old)
            if args:
                value = ((value, *args[1:]), kwargs)
            else:
                name = next(iter(kwargs))
                value = (args, {**kwargs, name: value})
        self.swaps[event] = value

    def current(self, node: Node, value: Any, *_: Any) -> Any:
        return self.swaps.get(node.args[0], value)

    def call_module(self, node: Node, *args: Any, **kwargs: Any) -> Any:
        self.busy = True
        try:
            return self.modules[node.target](*args, **kwargs)
        finally:
            self.busy = False

    def grad(self, node: Node, tensor: torch.Tensor, backward: int | None = None) -> Any:
        self.handles.append(tensor.register_hook(lambda g: self.fire_grad(node, g, backward)))
        return WAIT

    def fire_grad(self, node: Node, grad: torch.Tensor, backward: int | None) -> Any:
        if threading.get_ident() != self.thread or backward not in (None, self.backward_pass):
            return None
        value = grad.clone() if node in self.edits else grad  # hooks must not edit their argument
        self.give(node, value)
        result = self.settle([node], value)
        return value if result is None and value is not grad else result

    def backward(self, node: Node, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # Nodes already waiting to run stay parked: inside the backward pass only what the
        # gradients wake may run (autograd runs hooks with grad mode off).
        outer, self.backward_pass = self.backward_pass, node.index
        parked, self.ready = self.ready, []
        try:
            tensor.backward(*args, **kwargs)
        finally:
            self.backward_pass = outer
            self.ready = parked + self.ready
            heapq.heapify(self.ready)


def _batched(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


def _merge(full: Any, part: Any, start: int, size: int, batch: int) -> Any:
    """Put an invoke's slice back into the whole batch (cat keeps autograd intact)."""
    if type(full) in (tuple, list) and type(part) is type(full) and len(full) == len(part):
        return type(full)(_merge(f, p, start, size, batch) for f, p in zip(full, part))
    if type(full) is dict and type(part) is dict:
        return {k: _merge(full[k], v, start, size, batch) if k in full else v for k, v in part.items()}
    if _batched(full, batch) and isinstance(part, torch.Tensor):
        return torch.cat([full[:start], part.to(full.dtype), full[start + size:]])
    return part


def _is_edit(node: Node) -> bool:
    if node.op in ("swap", "setattr"):
        return True
    if node.op == "call_function":
        return node.target in _INPLACE_OPS
    return node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")


def _anchor(value: Any) -> Node | None:
    """The event whose value an edit changes, following item, attribute and view steps."""
    while type(value) is Node:
        if value.op in EVENTS or value.op == "grad":
            return value
        if value.op == "current" or value.op == "input" or value.op == "getattr":
            value = value.args[0]
        elif value.op == "call_function" and value.target is operator.getitem:
            value = value.args[0]
        elif value.op == "call_method" and value.target in _VIEWS:
            value = value.args[0]
        else:
            return None
    return None


def _downstream(node: Node) -> list[Node]:
    """Every node that depends on node, directly or not, in definition order."""
    seen: dict[int, Node] = {}
    stack = list(node.users)
    while stack:
        user = stack.pop()
        if user.index not in seen:
            seen[user.index] = user
            stack.extend(user.users)
    return [seen[i] for i in sorted(seen)]


def _event_name(node: Node) -> str:
    return f" (the {node.op} of module '{node.target}')" if node.op in EVENTS else ""


def _first_missing(node: Node) -> Node:
    """Follow pending dependencies down to the value that never arrived."""
    while True:
        pending = [d for d in node.deps if d.state == PENDING]
        if not pending:
            return node
        node = pending[0]
