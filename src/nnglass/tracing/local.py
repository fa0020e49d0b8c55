"""This thread's recording state: the stack of open recorders and where log lines go."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

__all__ = ["stack", "current", "suspended", "log", "set_log_handler"]

_local = threading.local()


def stack() -> list[Any]:
    """Open recorders (innermost last) of this thread; None entries suspend recording."""
    recorders = getattr(_local, "recorders", None)
    if recorders is None:
        recorders = _local.recorders = []
    return recorders


def current() -> Any:
    """The innermost open recorder of this thread, or None."""
    recorders = stack()
    return recorders[-1] if recorders else None


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Run real code inside a trace (scans, loading, tokenizing): nothing in it is recorded."""
    recorders = stack()
    recorders.append(None)
    try:
        yield
    finally:
        recorders.pop()


def log(*values: Any) -> None:
    """Where `tracer.log(...)` goes: stdout, or this thread's handler (a server sends LOG lines)."""
    handler = getattr(_local, "log_handler", None)
    if handler is None:
        print(*values)
    else:
        handler(" ".join(str(v) for v in values))


def set_log_handler(handler: Callable[[str], None] | None) -> None:
    """Send this thread's log lines to handler (None: back to stdout)."""
    _local.log_handler = handler
