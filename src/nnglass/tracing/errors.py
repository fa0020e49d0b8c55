"""Errors of tracing and running a graph, and where in the user's code they come from."""
from __future__ import annotations

from typing import Any

__all__ = ["TraceError", "NothingToRun", "ExecutionError", "EarlyStop", "Exit", "locate"]


class TraceError(Exception):
    """Misuse of a proxy or a context while the graph is being recorded."""


class NothingToRun(TraceError, ValueError):
    """A trace given no input and no invoke (a ValueError too, as nnsight raises)."""


class ExecutionError(Exception):
    """An error while running a node, for exceptions that cannot be rebuilt with a message."""


class EarlyStop(BaseException):
    """Unwinds the model's forward pass after a stop node ran (BaseException: model code must not catch it)."""


class Exit(BaseException):
    """`session.exit()` or `iterator.exit()` ran: unwinds to the session or the loop."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def locate(exc: Exception, node: Any) -> Exception:
    """The same kind of exception, its message extended with the user's line that made the node."""
    from .node import describe_line

    message = f"{exc}\n  while running {node.name}, created at {describe_line(node.where)}"
    try:
        located = type(exc)(message)
    except Exception:
        located = ExecutionError(message)
    located.nnglass_node = node  # type: ignore[attr-defined]
    return located
