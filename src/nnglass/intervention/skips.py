"""Skips: the modules a trace skips, so that a read inside a skipped module fails at the line that wrote it."""
from __future__ import annotations

from typing import Any, Iterable

from ..tracing.errors import TraceError
from ..tracing.node import Node, describe_line
from .interleaver import ALL_CALLS

__all__ = ["Skips", "SkippedModuleError"]


class SkippedModuleError(TraceError, ValueError):
    """A module inside a module that the same invoke skips at that call: it never runs (a ValueError, as nnsight)."""


class Skips:
    """The unconditional skips of one trace: (module path, invoke) -> [(call, skip node)]."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, int | None], list[tuple[int, Node]]] = {}

    def add(self, path: str, call: int, invoke: int | None, node: Node, addressed: Iterable[tuple]) -> None:
        """Record a skip; addressed are the (path, kind, call, invoke) of the module values recorded so far."""
        self.made.setdefault((path, invoke), []).append((call, node))
        for inner, _, inner_call, inner_invoke in addressed:
            if inner.startswith(path + ".") and inner_invoke == invoke:
                self.check(inner, inner_call, invoke)

    def check(self, path: str, call: int, invoke: int | None) -> None:
        """Raise if a module enclosing path is skipped at that call in that invoke."""
        outer = path
        while "." in outer:
            outer = outer.rpartition(".")[0]
            for skipped_call, node in self.made.get((outer, invoke), ()):
                if ALL_CALLS in (call, skipped_call) or call == skipped_call:
                    raise SkippedModuleError(
                        f"'{path}' never runs here: '{outer}', the module that holds it, is skipped at this call, "
                        f"so nothing inside it runs.\n  the skip: {describe_line(node.where)}")

    def __bool__(self) -> bool:
        return bool(self.made)
