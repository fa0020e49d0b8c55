"""Session: several traces (and loops) recorded together and run in order at exit; model edits."""
from __future__ import annotations

import copy
from typing import Any

from ..tracing.contexts import Condition, Loop
from ..tracing.tracer import Tracer
from .backend import Backend, LocalBackend
from .interleaver import ALL_CALLS
from .trace import Trace

__all__ = ["Session", "Editor"]


class Session(Tracer):
    """`with model.session() as session:` — traces inside run one after another on exit."""

    kind = "session"
    holds_traces = True

    def __init__(self, model: Any, backend: Backend | None = None, scan: bool = False, validate: bool = False) -> None:
        super().__init__()
        self.model = model
        self.backend = backend or LocalBackend()
        self.scan = scan or validate  # every trace inside scans (validates) as if opened with that option
        self.validate = validate

    def meta(self) -> dict:
        return {"model": getattr(self.model, "_remote_name", None)}

    def begin(self) -> None:
        self.experiment.owners[self.graph.id] = self  # traces inside read its scan/validate options

    def end(self) -> None:
        self.backend.run(self)

    def iter(self, iterable: Any, return_context: bool = False) -> Loop:
        """`with session.iter(items) as item:` records the body once and runs it per item."""
        return Loop(self, iterable, return_context)

    def log(self, *values: Any) -> None:
        """Print values when the session runs."""
        self.create("log", None, values)

    def exit(self) -> None:
        """End the session when this point runs."""
        self.create("exit", "session")

    def cond(self, condition: Any) -> Condition:
        """`with session.cond(c):` runs what is inside only if c holds."""
        return Condition(self, condition)

    def apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Add a call of any function to the session's graph."""
        return self.proxy("call_function", fn, args, kwargs)


class Editor(Trace):
    """`with model.edit() as edited:` records interventions that every later trace applies."""

    kind = "edit"
    nests = False
    first_call = ALL_CALLS  # an edit acts like a hook: on every call of the module

    def __init__(self, model: Any, inplace: bool) -> None:
        super().__init__(model, run=False)
        self.edited = model if inplace else copy.copy(model)
        if not inplace:
            self.edited._edits = list(model._edits)

    def begin(self) -> Any:
        super().begin()
        return self.edited

    def end(self) -> None:
        self.edited._edits.append(self.graph)
