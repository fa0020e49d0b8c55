"""Contexts of a recorder: conditions (`tracer.cond`) and loops (`session.iter`)."""
from __future__ import annotations

from typing import Any

from .errors import TraceError
from .proxy import Proxy

__all__ = ["Condition", "Loop"]


class Condition:
    """`with tracer.cond(condition):` — the nodes made inside run only if condition holds."""

    def __init__(self, recorder: Any, condition: Any) -> None:
        self.recorder = recorder
        self.condition = condition
        self._scope: Any = None

    def __enter__(self) -> Condition:
        guard = self.recorder.create("cond", None, (self.condition,))
        self._scope = self.recorder.scope(guard=guard)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._scope.__exit__(*exc)


class Loop:
    """`with session.iter(iterable) as item:` — the body is recorded once and run per item."""

    def __init__(self, recorder: Any, iterable: Any, return_context: bool = False) -> None:
        self.recorder = recorder
        self.iterable = iterable
        self.return_context = return_context
        self.body: Any = None
        self._scope: Any = None

    def __enter__(self) -> Any:
        recorder = self.recorder
        owner = recorder.create("iter", None, (self.iterable,))
        self.body = recorder.experiment.new_graph(recorder.graph, "loop")
        self.body.owner = owner
        owner.target = self.body.id
        self._scope = recorder.scope(graph=self.body, guard=None)
        self._scope.__enter__()
        item = Proxy(recorder.create("item", None), recorder.experiment)
        return (item, self) if self.return_context else item

    def __exit__(self, *exc: Any) -> None:
        self._scope.__exit__(*exc)
        self._scope = None

    def _recording(self) -> Any:
        if self._scope is None:
            raise TraceError("This loop's context can be used only inside its `with session.iter(...)` block.")
        return self.recorder

    def exit(self) -> None:
        """Leave the loop (like `break`) when this point runs."""
        self._recording().create("exit", "loop")

    def log(self, *values: Any) -> None:
        """Print values when the loop body runs."""
        self._recording().create("log", None, values)

    def cond(self, condition: Any) -> Condition:
        """`with iterator.cond(c):` runs what is inside only if c holds."""
        return Condition(self._recording(), condition)
