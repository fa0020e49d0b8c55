"""Proxy: a thin handle (node, graph) on a value that exists only once the model runs."""
from __future__ import annotations

import operator
from typing import Any

from .node import EMPTY, Node, map_nested


class TraceError(Exception):
    """Misuse of a proxy while the trace is being built."""


_NOT_RUN = (" Nothing has run yet: values exist once the outermost `with` block (trace or "
            "session) has ended, and only for proxies marked with .save().")
_NO_BOOL = ("A proxy has no truth value while the trace is being built: its value exists only "
            "when the model runs. Use `with tracer.cond(proxy):` for a condition.")
_NO_ITER = ("A proxy cannot be iterated while the trace is being built: its value exists only "
            "when the model runs. Use `with session.iter(proxy) as item:` to loop over it.")
_NO_LEN = ("A proxy has no len() while the trace is being built. Use `proxy.shape[0]` "
           "(known while tracing) or loop with `with session.iter(proxy) as item:`.")


class Proxy:
    """Stands for a node's value: operations on it record new nodes while the graph is open."""

    __slots__ = ("node", "graph")

    def __new__(cls, node: Node, graph: Any) -> Proxy:
        self = object.__new__(cls)
        _set_node(self, node)
        _set_graph(self, graph)
        return self

    # -- the value -------------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The node's value; raises if it was never set or not saved."""
        value = self.node.value
        if value is EMPTY:
            hint = _NOT_RUN if self.graph.building else ""
            raise ValueError("Accessing value before it's been set." + hint)
        return value

    def save(self) -> Proxy:
        """Keep this value after the trace."""
        self.node.saved = True
        return self

    def stop(self) -> None:
        """Stop the model's forward pass as soon as this value exists."""
        self.graph.add("stop", None, (self,))

    # -- shape information from the fake-tensor pass ----------------------------------------
    @property
    def shape(self) -> Any:
        return self.graph.owner.fake(self.node).shape if self.graph.building else self.value.shape

    @property
    def dtype(self) -> Any:
        return self.graph.owner.fake(self.node).dtype if self.graph.building else self.value.dtype

    @property
    def device(self) -> Any:
        return self.graph.owner.fake(self.node).device if self.graph.building else self.value.device

    @property
    def ndim(self) -> int:
        return self.graph.owner.fake(self.node).ndim if self.graph.building else self.value.ndim

    # -- gradients ----------------------------------------------------------------------------
    @property
    def grad(self) -> Proxy:
        """The gradient flowing back into this value (read or edit)."""
        if not self.graph.building:
            return self.value.grad
        return self.graph.owner.grad_of(self)

    @grad.setter
    def grad(self, value: Any) -> None:
        self.graph.owner.set_grad(self, value)

    # -- attributes, calls, items -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if not self.graph.building:
            return getattr(self.value, name)
        if name.startswith("__"):
            raise AttributeError(name)
        return Attribute(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "grad":
            object.__setattr__(self, name, value)
        elif self.graph.building:
            self.graph.add("setattr", name, (self, value))
        else:
            setattr(self.value, name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.graph.building:
            self.graph.add("call_function", operator.setitem, (self, key, value))
        else:
            self.value[_value(key)] = _value(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.graph.building:
            return self.graph.proxy("call_function", operator.call, (self, *args), kwargs)
        return self.value(*map_nested(args, _value), **map_nested(kwargs, _value))

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        graph = _graph_in((args, kwargs))
        if graph.building:
            return graph.proxy("call_function", func, args, kwargs)
        return func(*map_nested(args, _value), **map_nested(kwargs or {}, _value))

    # -- what cannot be traced ----------------------------------------------------------------
    def __bool__(self) -> bool:
        if self.graph.building:
            raise TraceError(_NO_BOOL)
        return bool(self.value)

    def __iter__(self) -> Any:
        if self.graph.building:
            raise TraceError(_NO_ITER)
        return iter(self.value)

    def __len__(self) -> int:
        if self.graph.building:
            raise TraceError(_NO_LEN)
        return len(self.value)

    # -- backward as a context ------------------------------------------------------------------
    def __enter__(self) -> Proxy:
        if self.node.op != "backward":
            raise TraceError("Only `proxy.backward()` can be used in a `with` statement.")
        self.graph.backward = self.node
        return self

    def __exit__(self, *exc: Any) -> None:
        self.graph.backward = None

    # -- printing ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Proxy({self.node.name})" if self.graph.building else repr(self.value)

    def __str__(self) -> str:
        return f"Proxy({self.node.name})" if self.graph.building else str(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = object.__hash__


_set_node = Proxy.__dict__["node"].__set__    # slot setters: Proxy overrides __setattr__
_set_graph = Proxy.__dict__["graph"].__set__


class Attribute(Proxy):
    """`proxy.name`: a method call if called, otherwise a `getattr` node made on first use."""

    __slots__ = ("parent", "attr", "_node")

    def __new__(cls, parent: Proxy, name: str) -> Attribute:
        self = object.__new__(cls)
        object.__setattr__(self, "parent", parent)
        object.__setattr__(self, "attr", name)
        object.__setattr__(self, "_node", None)
        _set_graph(self, parent.graph)
        return self

    @property
    def node(self) -> Node:  # type: ignore[override]
        if self._node is None:
            object.__setattr__(self, "_node", self.graph.add("getattr", self.attr, (self.parent,)))
        return self._node

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        if self.attr == "backward":
            return self.graph.proxy("backward", None, (self.parent, *args), kwargs)
        return self.graph.proxy("call_method", self.attr, (self.parent, *args), kwargs)


def _value(value: Any) -> Any:
    return value.value if isinstance(value, Proxy) else value


def _graph_in(value: Any) -> Any:
    found: list[Any] = []
    map_nested(value, lambda v: found.append(v.graph) if isinstance(v, Proxy) else None)
    return found[0]


def _binary(fn: Any) -> Any:
    def method(self: Proxy, other: Any) -> Any:
        if self.graph.building:
            node = self.graph.add("call_function", fn, (self, other))
            return Proxy(node, node.graph)
        return fn(self.value, _value(other))
    return method


def _reflected(fn: Any) -> Any:
    def method(self: Proxy, other: Any) -> Any:
        if self.graph.building:
            node = self.graph.add("call_function", fn, (other, self))
            return Proxy(node, node.graph)
        return fn(_value(other), self.value)
    return method


def _unary(fn: Any) -> Any:
    def method(self: Proxy) -> Any:
        if self.graph.building:
            node = self.graph.add("call_function", fn, (self,))
            return Proxy(node, node.graph)
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
