"""Node: one operation of an intervention graph, kept as plain data (like torch.fx)."""
from __future__ import annotations

import linecache
import os
import sys
from types import FrameType
from typing import Any

import einops
import torch

__all__ = ["Node", "OWN_ARGS", "user_line", "where_of", "location", "describe_line", "LIBRARY_FILES"]

# Ops that look up their own arguments (`pick`: the branch not taken has no value; `fired`: whether nodes
# it does not wait for have run); their refs are ().
OWN_ARGS = frozenset({"pick", "fired"})

# Frames from these folders are skipped when we look for the user's line.
_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep
    for m in (sys.modules["nnglass"], torch, einops)
) + (os.path.dirname(os.__file__) + os.sep + "contextlib.py",)
LIBRARY_FILES: dict[str, bool] = {}  # filename -> whether frames there are skipped (filled as met)


def user_line(frame: FrameType) -> tuple[Any, int]:
    """Where the first caller outside nnglass, torch and einops is: (code object, bytecode offset).

    The walk starts at frame; an entry point that passes its own caller's frame spares the frames in
    between (each one walked costs a frame object).

    The line number is worked out only when needed (`location`): a frame's f_lineno costs time
    proportional to the size of its code, which is large for a long script or notebook cell.
    """
    while frame.f_back is not None:
        filename = frame.f_code.co_filename
        skip = LIBRARY_FILES.get(filename)
        if skip is None:
            skip = LIBRARY_FILES[filename] = filename.startswith(_LIBRARY_DIRS)
        if not skip:
            break
        frame = frame.f_back
    return frame.f_code, frame.f_lasti


def where_of(frame: FrameType) -> tuple[Any, int]:
    """A node's `where` for an operation seen from frame: the frame itself when it is user code (the common
    case, known from its file), else the first user frame above it."""
    code = frame.f_code
    return (code, frame.f_lasti) if LIBRARY_FILES.get(code.co_filename) is False else user_line(frame)


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


class Node:
    """One operation: `op` names the interpreter method, `target` what it calls or reads.

    `refs` are the positions of the arguments that are nodes, or None when nodes may also sit inside
    containers (of args or kwargs: the interpreter then walks them). `deps` are the nodes of the same
    graph this one waits for (its arguments, an open condition, a subgraph's outer values); `users` the
    indices of the nodes of the same graph that wait for it. Arguments may also name nodes of enclosing
    graphs (their values are in the env when this graph runs).
    """

    __slots__ = ("op", "target", "args", "kwargs", "graph", "index", "deps", "users", "where",
                 "invoke", "saved", "refs")

    def __init__(self, op: str, target: Any, args: tuple, kwargs: dict, graph: Any, index: int,
                 deps: list[Node], refs: tuple[int, ...] | None, where: Any, invoke: int | None) -> None:
        self.op = op
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.graph = graph
        self.index = index
        self.deps = deps
        self.users: list[int] = []  # indices: no reference cycle between a node and its users
        self.where = where
        self.invoke = invoke
        self.saved = False
        self.refs = refs

    @property
    def name(self) -> str:
        """A readable id, e.g. `call_function_3`."""
        return f"{self.op}_{self.index}"

    def __repr__(self) -> str:
        target = getattr(self.target, "__qualname__", None) or repr(self.target)
        return f"Node({self.name}, target={target})"
