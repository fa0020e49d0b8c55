"""Session: several traces (and loops) recorded together and run in order at exit; model edits."""
from __future__ import annotations

import copy
from typing import Any

from ..tracing import compile, contexts
from ..tracing.contexts import Condition, Iterator
from ..tracing.executor import EMPTY, Executor, Exit
from ..tracing.graph import Graph
from .tracer import Tracer


class Session:
    """`with model.session() as session:` — traces inside run one after another on exit."""

    def __init__(self, model: Any, remote: bool = False) -> None:
        self.model = model
        self.remote = remote  # send the whole session to a server as one request
        self.graph = Graph(sequential=True)
        self.graph.owner = self

    def __enter__(self) -> Session:
        contexts.stack().append(self)
        contexts.open_patches()
        contexts.pause_gc()
        compile.enter(self)  # native control flow: see tracing/compile.py
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return compile.exit(self, exc_type, exc, tb, self._close)

    def _close(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leave the context; run the session unless the body failed."""
        contexts.stack().pop()
        contexts.close_patches()
        self.graph.close()
        try:
            if exc_type is None:
                self.execute()
        finally:
            contexts.resume_gc()

    def execute(self) -> None:
        """Run every node in order (here or on the server); keep only saved values."""
        if self.remote:
            from ..remote.client import execute_remote
            execute_remote(self)
        else:
            run_session(self.graph)

    def iter(self, iterable: Any, return_context: bool = False) -> Iterator:
        """`with session.iter(items) as item:` records the body once and runs it per item."""
        return Iterator(self.graph, iterable, return_context)

    def log(self, *values: Any) -> None:
        """Print values when the session runs."""
        self.graph.add("log", None, values)

    def exit(self) -> None:
        """End the session when this point runs."""
        self.graph.add("exit", "session")

    def cond(self, condition: Any) -> Condition:
        """`with session.cond(c):` runs what is inside only if c holds."""
        return Condition(self.graph, condition)


def run_session(graph: Graph) -> None:
    """Run a session graph in order, then drop every value that was not saved."""
    try:
        Executor(graph).run()
    except Exit as exit:
        if exit.scope != "session":
            raise
    finally:
        for inner in graph.walk():
            for node in inner.nodes:
                if not node.saved:
                    node.value = EMPTY


class Editor(Tracer):
    """`with model.edit() as edited:` records interventions that every later trace applies."""

    def __init__(self, model: Any, inplace: bool) -> None:
        super().__init__(model, run=False)
        self.edited = model if inplace else copy.copy(model)
        if not inplace:
            self.edited._edits = list(model._edits)

    def __enter__(self) -> Any:
        super().__enter__()
        return self.edited

    def _close(self, exc_type: Any, exc: Any, tb: Any) -> None:
        super()._close(exc_type, exc, tb)
        if exc_type is None:
            self.edited._edits.append(self.graph)
