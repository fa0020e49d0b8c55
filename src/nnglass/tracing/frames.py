"""Frames of user code: which one opened a `with` block, skipping its body, writing its variables back."""
from __future__ import annotations

import ctypes
import dis
import inspect
import os
import sys
from types import FrameType
from typing import Any

__all__ = ["SkipBody", "with_frame", "skip_body", "stop_skipping", "read", "write"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_CONTEXTLIB = os.path.dirname(os.__file__) + os.sep + "contextlib.py"
_NOP = dis.opmap["NOP"]
_BEFORE_WITH = {dis.opmap[name] for name in ("BEFORE_WITH", "BEFORE_ASYNC_WITH") if name in dis.opmap}


class SkipBody(BaseException):
    """Raised at the first line of a with-block whose compiled body runs instead (BaseException: `except Exception` in user code must not catch it)."""


def with_frame() -> FrameType | None:
    """The user frame whose `with` statement is entering a context now, or None (entered from nnglass or by hand)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith((_PACKAGE, _CONTEXTLIB)):
        frame = frame.f_back
    if frame is None or frame.f_code.co_code[frame.f_lasti] not in _BEFORE_WITH:
        return None
    return frame


def _ignore_calls(frame: FrameType, event: str, arg: Any) -> None:
    """The global trace function while a body is skipped: no tracing of the frames it calls."""
    return None


def skip_body(frame: FrameType, first_line: int) -> bool:
    """Raise SkipBody in frame when it reaches first_line; False when another tracer (debugger, coverage) is active."""
    if sys.gettrace() is not None:
        return False

    def at_line(traced: FrameType, event: str, arg: Any) -> Any:
        if event in ("line", "opcode") and traced.f_lineno >= first_line:
            if traced.f_code.co_code[traced.f_lasti] == _NOP:  # a `try:` line: outside the with's handler
                traced.f_trace_opcodes = True  # raise at the next instruction, inside the try (and the with)
                return at_line
            stop_skipping(traced)
            raise SkipBody
        return at_line
    frame.f_trace = at_line
    sys.settrace(_ignore_calls)
    return True


def stop_skipping(frame: FrameType) -> None:
    """Remove what skip_body installed (also when the body never started)."""
    frame.f_trace = None
    frame.f_trace_opcodes = False
    if sys.gettrace() is _ignore_calls:
        sys.settrace(None)


def _locals_to_fast() -> Any:
    """PyFrame_LocalsToFast with its own prototype (a plain int and the frame are passed as they are), or None
    where it is gone (3.13: f_locals writes through)."""
    if not hasattr(ctypes.pythonapi, "PyFrame_LocalsToFast"):
        return None
    return ctypes.PYFUNCTYPE(None, ctypes.py_object, ctypes.c_int)(("PyFrame_LocalsToFast", ctypes.pythonapi))


_LOCALS_TO_FAST = _locals_to_fast()


def _optimized(frame: FrameType) -> bool:
    """A function frame whose f_locals is a snapshot dict kept on the frame (Python before 3.13)."""
    return bool(frame.f_code.co_flags & inspect.CO_OPTIMIZED) and _LOCALS_TO_FAST is not None


def read(frame: FrameType) -> dict[str, Any]:
    """A frame's variables (a copy for a function: the frame's snapshot is emptied so it keeps no values alive)."""
    namespace = frame.f_locals
    if not _optimized(frame):
        return namespace
    values = dict(namespace)
    namespace.clear()
    return values


def write(frame: FrameType, values: dict[str, Any]) -> None:
    """Set variables of a frame: a function's fast locals, or the namespace dict of a module or class body."""
    if not values:
        return
    namespace = frame.f_locals
    namespace.update(values)
    if _optimized(frame):
        _LOCALS_TO_FAST(frame, 0)
        namespace.clear()
