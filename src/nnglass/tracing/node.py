"""Node: one operation of an intervention graph, kept as plain data (like torch.fx)."""
from __future__ import annotations

import linecache
import os
import sys
from typing import Any, Callable

import einops
import torch


class _Empty:
    """Marks a node value that is not set (never computed, or freed)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY = _Empty()

# Frames from these folders are skipped when we look for the user's line.
_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep
    for m in (sys.modules["nnglass"], torch, einops)
) + (os.path.dirname(os.__file__) + os.sep + "contextlib.py",)


_is_library: dict[str, bool] = {}  # filename -> whether frames there are skipped


def user_line() -> tuple[Any, int]:
    """Where the first caller outside nnglass, torch and einops is: (code object, bytecode offset).

    The line number is worked out only when needed (`location`): a frame's f_lineno costs time
    proportional to the size of its code, which is large for a long script or notebook cell.
    """
    frame = sys._getframe(3)  # 0: here, 1: Graph.add, 2: the nnglass code that called it, 3: its caller
    while frame.f_back is not None:
        filename = frame.f_code.co_filename
        skip = _is_library.get(filename)
        if skip is None:
            skip = _is_library[filename] = filename.startswith(_LIBRARY_DIRS)
        if not skip:
            break
        frame = frame.f_back
    return frame.f_code, frame.f_lasti


def location(where: tuple | None) -> tuple[str, int] | None:
    """(file, line) of a node's `where`, which is (code, offset) or already (file, line)."""
    if where is None or isinstance(where[0], str):
        return where
    code, offset = where
    line = next((line for start, end, line in code.co_lines() if start <= offset < end), None)
    return code.co_filename, line or code.co_firstlineno


def describe_line(where: tuple | None) -> str:
    """`file:line: source text` for an error message."""
    if where is None:
        return "<unknown>"
    filename, lineno = location(where)
    source = linecache.getline(filename, lineno).strip()
    return f"{filename}:{lineno}" + (f": {source}" if source else "")


def map_nested(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply fn to every leaf of nested tuples, lists, dicts and slices."""
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(map_nested(v, fn) for v in value)
    if kind is dict:
        return {k: map_nested(v, fn) for k, v in value.items()}
    if kind is slice:
        return slice(map_nested(value.start, fn), map_nested(value.stop, fn), map_nested(value.step, fn))
    return fn(value)


class Node:
    """One operation: `op` names the executor method, `target` what it calls or reads."""

    __slots__ = (
        "op", "target", "args", "kwargs", "graph", "index", "deps", "users", "where",
        "invoke", "saved", "nested", "value", "remaining", "uses_left", "state",
    )

    def __init__(self, op: str, target: Any, args: tuple, kwargs: dict, graph: Any,
                 deps: list[Node], nested: bool, where: tuple[str, int] | None,
                 invoke: int | None) -> None:
        self.op = op
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.graph = graph
        self.index = len(graph.nodes)
        self.deps = deps          # distinct nodes this one waits for
        self.users: list[Node] = []
        self.where = where
        self.invoke = invoke
        self.saved = False
        self.nested = nested      # args hold containers that must be walked to resolve
        self.value: Any = EMPTY
        self.state = 0            # PENDING, DONE or SKIPPED, during a run
        # set when a run starts: remaining (deps not yet done), uses_left (users not yet done;
        # the value is freed at 0)

    @property
    def name(self) -> str:
        """A readable id, e.g. `call_function_3`."""
        return f"{self.op}_{self.index}"

    def resolve_args(self) -> tuple[tuple, dict]:
        """Args and kwargs with every dependency replaced by its value."""
        if self.nested:
            return map_nested(self.args, _value_of), map_nested(self.kwargs, _value_of)
        args = tuple(a.value if type(a) is Node else a for a in self.args)
        return args, self.kwargs

    def __repr__(self) -> str:
        return f"Node({self.name}, target={_target_name(self.target)})"


def _value_of(value: Any) -> Any:
    return value.value if type(value) is Node else value


def _target_name(target: Any) -> str:
    return getattr(target, "__qualname__", None) or repr(target)


PENDING, DONE, SKIPPED = 0, 1, 2
