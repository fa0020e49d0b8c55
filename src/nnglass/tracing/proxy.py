"""Proxy: a handle on a node's value, which exists only once the graph runs."""
from __future__ import annotations

import operator
import sys
from typing import Any

from .errors import TraceError
from .node import Node
from .walk import leaves, map_leaves

__all__ = ["Proxy", "Attribute", "value_of", "new_proxy", "set_node", "set_experiment"]

_NOT_RUN = (" Nothing has run yet: values exist once the outermost `with` block (trace or "
            "session) has ended, and only for proxies marked with .save().")
_NO_BOOL = ("A proxy has no truth value while the trace is being built: its value exists only "
            "when the model runs. Use `with tracer.cond(proxy):` for a condition.")
_NO_ITER = ("This proxy cannot be iterated or unpacked while recording: its length is unknown here (only a "
            "trace's values have one, from the fake pass). Index it (`proxy[0]`), or loop over it with "
            "`with session.iter(proxy) as item:` in a session.")
_NO_LEN = ("This proxy has no len() while recording: its length is unknown here (only a trace's values have "
           "one, from the fake pass). Use `proxy.shape[0]`, or loop with `with session.iter(proxy) as item:`.")
_MISSING = object()


class Proxy:
    """Stands for a node's value: operations on it record new nodes while its experiment records."""

    __slots__ = ("node", "experiment")

    def __new__(cls, node: Node, experiment: Any) -> Proxy:
        self = new_proxy(cls)
        set_node(self, node)
        set_experiment(self, experiment)
        return self

    # -- the value -------------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The node's value; raises if it was never set or not saved."""
        value = self.experiment.results.get(self.node, _MISSING)
        if value is _MISSING:
            if self.experiment.pending is not None:
                raise ValueError(self.experiment.pending)
            hint = _NOT_RUN if self.experiment.building else ""
            raise ValueError("Accessing value before it's been set." + hint)
        return value

    def save(self) -> Proxy:
        """Keep this value after the trace."""
        self.node.saved = True
        return self

    def stop(self) -> None:
        """Stop the model's forward pass as soon as this value exists."""
        self.experiment.recorder.create("stop", None, (self,))

    # -- shape information from the fake pass -----------------------------------------------
    @property
    def shape(self) -> Any:
        return self._described("shape")

    @property
    def dtype(self) -> Any:
        return self._described("dtype")

    @property
    def device(self) -> Any:
        return self._described("device")

    @property
    def ndim(self) -> int:
        return self._described("ndim")

    def _described(self, name: str) -> Any:
        """An attribute of the value (while recording: of its fake value); never an AttributeError."""
        try:
            if self.experiment.building:
                return self.experiment.recorder.describe(self.node, name)
            return getattr(self.value, name)
        except AttributeError as error:
            raise TraceError(f"This value has no `.{name}` ({error}).") from None

    # -- gradients ----------------------------------------------------------------------------
    @property
    def grad(self) -> Any:
        """The gradient flowing back into this value (read or edit)."""
        if not self.experiment.building:
            return self.value.grad
        return self.experiment.recorder.grad_of(self)

    @grad.setter
    def grad(self, value: Any) -> None:
        self.experiment.recorder.set_grad(self, value)

    # -- attributes, calls, items -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if not self.experiment.building:
            return getattr(self.value, name)
        if name.startswith("__"):
            raise AttributeError(name)
        return Attribute(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "grad":
            object.__setattr__(self, name, value)
        elif self.experiment.building:
            self.experiment.recorder.create("setattr", name, (self, value))
        else:
            setattr(self.value, name, value_of(value))

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.experiment.building:
            self.experiment.recorder.create("call_function", operator.setitem, (self, key, value))
        else:
            self.value[value_of(key)] = value_of(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.experiment.building:
            return self.experiment.recorder.proxy("call_function", operator.call, (self, *args), kwargs)
        return self.value(*map_leaves(args, value_of), **map_leaves(kwargs, value_of))

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        recorder = recording_in((args, kwargs))
        if recorder is not None:
            if kwargs:
                return recorder.proxy("call_function", func, args, kwargs, sys._getframe(1))
            return recorder.call(func, args, sys._getframe(1))
        return func(*map_leaves(args, value_of), **map_leaves(kwargs or {}, value_of))

    # -- what cannot be traced ----------------------------------------------------------------
    def __bool__(self) -> bool:
        if self.experiment.building:
            raise TraceError(_NO_BOOL)
        return bool(self.value)

    def __iter__(self) -> Any:
        if self.experiment.building:  # `a, b = proxy`: one item proxy per element of the fake value
            items = [self[i] for i in range(self._length(_NO_ITER))]
            return iter([item.save() for item in items] if self.node.saved else items)  # `a, b = x.save()`
        return iter(self.value)

    def __contains__(self, item: Any) -> bool:
        if self.experiment.building:
            raise TraceError("`in` on a proxy has no answer while recording: its value exists when the model "
                             "runs. Test membership after the block, or with torch (`(proxy == x).any()`).")
        return value_of(item) in self.value

    def __len__(self) -> int:
        if self.experiment.building:
            return self._length(_NO_LEN)
        return len(self.value)

    def _length(self, advice: str) -> int:
        """The value's length while recording, from its fake value (a tuple's, a tensor's first dimension)."""
        try:
            return self._described("__len__")()
        except (TraceError, TypeError):
            raise TraceError(advice) from None

    # -- backward as a context ------------------------------------------------------------------
    def __enter__(self) -> Proxy:
        if self.node.op != "backward":
            raise TraceError("Only `proxy.backward()` can be used in a `with` statement.")
        self.experiment.recorder.open_backward(self.node)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.experiment.recorder.open_backward(None)

    # -- printing ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Proxy({self.node.name})" if self.experiment.building else repr(self.value)

    def __str__(self) -> str:
        return f"Proxy({self.node.name})" if self.experiment.building else str(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = object.__hash__


new_proxy = object.__new__  # with the slot setters, a proxy made without a Python-level __new__
set_node = Proxy.__dict__["node"].__set__    # slot setters: Proxy overrides __setattr__
set_experiment = Proxy.__dict__["experiment"].__set__


class Attribute(Proxy):
    """`proxy.name`: a method call if called, otherwise a `getattr` node made on first use."""

    __slots__ = ("parent", "attr", "_node")

    def __new__(cls, parent: Proxy, name: str) -> Attribute:
        self = object.__new__(cls)
        object.__setattr__(self, "parent", parent)
        object.__setattr__(self, "attr", name)
        object.__setattr__(self, "_node", None)
        set_experiment(self, parent.experiment)
        return self

    @property
    def node(self) -> Node:  # type: ignore[override]
        if self._node is None:
            object.__setattr__(self, "_node", self.experiment.recorder.create("getattr", self.attr, (self.parent,)))
        return self._node

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        op = "backward" if self.attr == "backward" else "call_method"
        target = None if op == "backward" else self.attr
        recorder = self.experiment.recorder
        proxy = recorder.proxy(op, target, (self.parent, *args), kwargs)
        if op == "backward":
            recorder.backward_recorded(proxy.node)
        return proxy


def value_of(value: Any) -> Any:
    """A proxy's value (for a finished experiment), anything else unchanged."""
    return value.value if isinstance(value, Proxy) else value


def recording_in(value: Any) -> Any:
    """The recorder of the first proxy in value whose experiment is still recording, else None."""
    for leaf in leaves(value):
        if isinstance(leaf, Proxy) and leaf.experiment.building:
            return leaf.experiment.recorder
    return None


def _binary(fn: Any) -> Any:
    def method(self: Proxy, other: Any) -> Any:
        experiment = self.experiment
        if experiment.building:
            return experiment.recorder.binary(fn, self, other, sys._getframe(1))
        return fn(self.value, value_of(other))
    return method


def _reflected(fn: Any) -> Any:
    def method(self: Proxy, other: Any) -> Any:
        experiment = self.experiment
        if experiment.building:
            return experiment.recorder.binary(fn, other, self, sys._getframe(1))
        return fn(value_of(other), self.value)
    return method


def _unary(fn: Any) -> Any:
    def method(self: Proxy) -> Any:
        experiment = self.experiment
        if experiment.building:
            return experiment.recorder.call(fn, (self,), sys._getframe(1))
        return fn(self.value)
    return method


_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
           "and", "or", "xor", "lshift", "rshift")
for _name in _BINARY:
    _fn = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(Proxy, f"__{_name}__", _binary(_fn))
    setattr(Proxy, f"__r{_name}__", _reflected(_fn))
    setattr(Proxy, f"__i{_name}__", _binary(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "eq", "ne", "gt", "ge", "getitem"):
    setattr(Proxy, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Proxy, f"__{_name}__", _unary(getattr(operator, _name)))
for _name, _fn in (("float", float), ("int", int), ("complex", complex), ("index", operator.index)):
    setattr(Proxy, f"__{_name}__", lambda self, _fn=_fn: _fn(self.value))
