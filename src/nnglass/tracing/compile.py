"""Native Python control flow in a with-block, compiled into graph constructs; real values after the block.

`if`, `for`, `while`, `break`/`continue`, `print(...)` and f-strings inside `with model.trace(...)`,
`model.generate(...)` or `model.session()` cannot run as written: a proxy has no value yet. On
entering such a block we read its source (linecache), rewrite those statements into calls of a
`Runtime` (tracing/runtime.py) that decide at run time (a proxy condition becomes
`context.cond(...)`, a plain one stays an `if`; a loop over a proxy becomes `session.iter(...)`
in a session and is unrolled by its `.shape[0]` in a trace; `break`/`continue` under an `if` on
a proxy guard the rest of the loop; `print` of a proxy becomes `context.log(...)`), and compile
the result as a function with the user's file and line numbers (the rewriting is tracing/rewrite.py).
The original body is skipped: a trace function raises `SkipBody` at its first line and the context's `__exit__` runs the compiled body instead,
then writes its variables back into the user's frame. A body that needs no rewriting runs as
written. Either way, after the outermost context ran, saved proxies that the block refers to
(also inside lists, dicts and tuples) are replaced in the user's frame by their real values.

Where no source is found (exec'd strings, a REPL without linecache), under another trace
function (a debugger, coverage), for one-line blocks (`with m.trace(x): ...`) and for bodies that
leave the block (`return`, `yield`, `await`, `break`/`continue` of an outer loop), the body runs
as written (nnsight 0.4 behaviour); a TraceError it raises then carries a note saying why.

The hook into a context (Tracer, Session; Editor inherits Tracer's and overrides `_close`):
  - last line of `__enter__`:     `compile.enter(self)`
  - `__exit__` becomes:           `return compile.exit(self, exc_type, exc, tb, self._close)`
    where `_close(exc_type, exc, tb)` is the old `__exit__` body (cleanup, then run the graph when
    exc_type is None). `compile.exit` runs the compiled body while the context is still open, calls
    `_close` exactly once (with the body's exception, if any), and returns True when it suppressed
    `SkipBody`. Contexts nest strictly, so the open blocks are a per-thread stack.
Besides, compiled code uses only public API: `context.cond`, `context.log`, `session.iter`,
`iterator.exit/cond/log`, `nnglass.apply`, `Proxy.shape`, `Proxy.save`, `Proxy.value`, plus
`local.current()` (innermost open recorder), `proxy.experiment.building` (still recording) and
`proxy.node.saved`. A context counts as a session when it has no `invoke` method.
Importing this module gives `torch.Tensor` a `value` property (the tensor itself).
"""
from __future__ import annotations

import ast
import copy
import functools
import inspect
import linecache
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from types import CodeType, FrameType, FunctionType
from typing import Any, Callable

import torch

from ..config import CONFIG
from . import frames
from .errors import TraceError
from .proxy import Proxy
from .rewrite import BODY, Unsupported, compile_body, saves_plain, steps_block, stored, walk_scope
from .runtime import UNSET, Runtime

__all__ = ["enter", "exit", "save", "variables"]

_local = threading.local()


# -- the hook -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Opened:
    """One open context: the user frame of its with-statement, that block, what nnglass.save was given."""
    context: Any
    frame: FrameType | None
    block: Block | None
    skipping: bool = False  # a trace function skips the original body (skip_body)
    pending: list = field(default_factory=list)
    values: dict | None = None  # a compiled body's variables at its end (the frame has them only later)


def _opened() -> list[_Opened]:
    stack = getattr(_local, "opened", None)
    if stack is None:
        stack = _local.opened = []
    return stack


def enter(context: Any) -> None:
    """Called last in a context's `__enter__`: find its with-block, arrange to run it compiled if needed."""
    frame = frames.with_frame()
    if frame is not None and frame.f_code in _COMPILED:
        frame = None  # inside a compiled body: the outermost block was compiled whole
    block = _block(frame) if frame is not None else None
    skipping = False
    if block is not None and block.runs_compiled and not CONFIG.APP.CONTROL_FLOW_HANDLING:
        block = block.as_written("nnglass.CONFIG.APP.CONTROL_FLOW_HANDLING is False")
    elif block is not None and block.runs_compiled:
        skipping = frames.skip_body(frame, block.first_line)
        if not skipping:
            block = block.as_written("another trace function (a debugger, coverage) is active")
    _opened().append(_Opened(context, frame, block, skipping))


def exit(context: Any, kind: Any, error: Any, tb: Any, close: Callable[[Any, Any, Any], Any]) -> bool:
    """The context's `__exit__`: run the compiled body (if its original was skipped), close, rebind values."""
    stack = _opened()
    opened = stack[-1]   # popped only at the end: the compiled body's nnglass.save calls land here
    assert opened.context is context, "contexts must close in the reverse order of opening"
    if opened.skipping:
        frames.stop_skipping(opened.frame)
    try:
        if isinstance(error, frames.SkipBody):
            _run_compiled(opened, close)
            return True
        namespace = _referred(opened) if kind is None else {}
        _mark_saved(opened.pending + _containers(namespace))
        if isinstance(error, TraceError) and opened.block is not None and opened.block.reason is not None:
            error.add_note(f"nnglass ran this with-block as written, without compiling it: {opened.block.reason}")
        close(kind, error, tb)
        if kind is None and opened.block is not None:
            _rebind_frame(opened, namespace)
        return False
    finally:
        stack.pop()


def save(value: Any) -> Any:
    """`nnglass.save(obj)`: a proxy is saved now; every proxy inside a container when its block ends."""
    if isinstance(value, Proxy):
        return value.save()
    stack = _opened()
    if stack:
        stack[-1].pending.append(value)
    return value


def variables(context: Any) -> dict[str, Any]:
    """The variables that the with-block of `context` refers to, as they are at its end (while it closes)."""
    opened = next((o for o in reversed(_opened()) if o.context is context), None)
    if opened is None or opened.frame is None:
        return {}
    if opened.values is not None:
        return dict(opened.values)
    namespace = frames.read(opened.frame)
    names = opened.block.names if opened.block is not None else namespace
    return {name: namespace[name] for name in names if name in namespace}


def _run_compiled(opened: _Opened, close: Callable[[Any, Any, Any], Any]) -> None:
    """Run the compiled body, then close the context with its outcome; write the variables back."""
    try:
        namespace = _referred(opened)  # the frame read once: the body's parameters and the lists it fills
        before, values = _call_body(opened, namespace)
        opened.values = values
        _mark_saved(opened.pending + _containers(namespace))
    except BaseException as exc:
        close(type(exc), exc, exc.__traceback__)
        raise _without_skip(exc)
    try:
        close(None, None, None)
    except BaseException as exc:
        raise _without_skip(exc)
    finally:
        frames.write(opened.frame, {name: _after(value, before.get(name, value)) for name, value in values.items()})
        for value in opened.pending:
            _real(value)


def _call_body(opened: _Opened, namespace: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Call the compiled body with the frame's variables it takes (from namespace, what the block refers to):
    those variables, and the body's at its end."""
    block, frame = opened.block, opened.frame
    before = {name: namespace[name] for name in block.params if name in namespace}
    body = FunctionType(block.code, frame.f_globals, BODY, block.defaults)
    values = body(Runtime(block.filename, save, opened.pending), **before)
    return before, {name: value for name, value in values.items() if not name.startswith("__nnglass")}


def _after(value: Any, before: Any) -> Any:
    """A variable's value after a compiled block: real values; a saved proxy whose node never ran (its
    `if` did not hold, the model stopped first) gives back the value the variable had before the block; the
    proxies of a run that did not block (`blocking=False`) stay, to be filled when its result is in."""
    real = _real(value)
    if (real is value and isinstance(value, Proxy) and value.node.saved and not value.experiment.building
            and value.experiment.pending is None):
        try:
            value.value
        except ValueError:
            return before
    return real


def _without_skip(exc: BaseException) -> BaseException:
    """Hide the SkipBody that was being handled when exc was raised (it is not part of the user's error)."""
    if isinstance(exc.__context__, frames.SkipBody):
        exc.__suppress_context__ = True
    return exc


# -- real values after the block ----------------------------------------------------------------------
class _Saved:
    """A builtin value kept after a trace (an instance of its type); `.value` is the value as the graph made it.

    Pickling and copying give the plain type, so saved results load anywhere without nnglass.
    """

    _plain: type = object

    @property
    def value(self) -> Any:
        return self._value

    def __reduce__(self) -> tuple:
        return self._plain, (self._plain(self),)


def _saved_type(plain: type) -> type:
    return type(f"Saved{plain.__name__.capitalize()}", (_Saved, plain), {"_plain": plain, "__module__": __name__})


_SAVED_TYPES = {plain: _saved_type(plain) for plain in (list, dict, tuple, set, int, float, str, bytes, complex)}


def _saved(value: Any) -> Any:
    """value as an instance of its Saved type, or None for other types."""
    kind = _SAVED_TYPES.get(type(value))
    if kind is None:
        return None
    saved = kind(value)
    saved._value = value
    return saved


def _tensor_value(self: torch.Tensor) -> torch.Tensor:
    """A tensor's `.value` is the tensor itself: nnsight 0.4 code reads `.value` of saved results."""
    return self


if not hasattr(torch.Tensor, "value"):
    torch.Tensor.value = property(_tensor_value)


def _as_real(proxy: Proxy) -> Any:
    """A finished proxy's real value where that value can also answer `.value` (or is None); else the proxy."""
    if proxy.experiment.building or not proxy.node.saved:
        return proxy
    try:
        value = proxy.value
    except ValueError:
        return proxy
    if value is None or isinstance(value, torch.Tensor):
        return value  # None has no `.value` to give (a variable merged after an `if` may hold it)
    saved = _saved(value)
    return saved if saved is not None else proxy


def _real(value: Any, depth: int = 0) -> Any:
    """value with its saved proxies replaced by real values; lists and dicts are updated in place."""
    kind = type(value)
    if isinstance(value, Proxy):
        return _as_real(value)
    if depth > 3 or kind not in (list, dict, tuple):
        return value
    if kind is tuple:
        items = tuple(_real(item, depth + 1) for item in value)
        return items if any(a is not b for a, b in zip(items, value)) else value
    if kind is list:
        value[:] = [item for item in value if not _unreached(item)]
    for key, item in (value.items() if kind is dict else enumerate(value)):
        new = _real(item, depth + 1)
        if new is not item:
            value[key] = new
    return value


def _unreached(value: Any) -> bool:
    """Whether value is a proxy of a generation step that never happened (`tracer.iter[:]` ran past the end)."""
    if not isinstance(value, Proxy) or value.experiment.building:
        return False
    owner = value.experiment.owners.get(value.node.graph.id)
    return getattr(owner, "unreached", None) is not None and owner.unreached(value.node)


def _mark_saved(pending: list) -> None:
    """Save every proxy inside the objects given to nnglass.save."""
    for value in pending:
        _each_proxy(value, Proxy.save)


def _each_proxy(value: Any, fn: Callable[[Proxy], Any], depth: int = 0) -> None:
    if isinstance(value, Proxy):
        fn(value)
    elif depth < 4 and type(value) in (list, tuple, set):
        for item in value:
            _each_proxy(item, fn, depth + 1)
    elif depth < 4 and type(value) is dict:
        for item in value.values():
            _each_proxy(item, fn, depth + 1)


def _referred(opened: _Opened) -> dict[str, Any]:
    """The frame's variables that the block refers to (none for `pass`: the frame is not read)."""
    if opened.block is None or not opened.block.names:
        return {}
    namespace = frames.read(opened.frame)
    return {name: namespace[name] for name in opened.block.names if name in namespace}


def _containers(variables: dict[str, Any]) -> list[Any]:
    """The lists, dicts, sets and tuples among variables: proxies put into them (`acts.append(...)` on a
    list from outside the block) are kept, as nnsight 0.5 fills such a list with real values."""
    return [value for value in variables.values() if type(value) in (list, dict, set, tuple)]


def _rebind_frame(opened: _Opened, namespace: dict[str, Any]) -> None:
    """After a block that ran as written: its saved proxies in the frame become real values."""
    changed = {name: new for name, value in namespace.items() if (new := _real(value)) is not value}
    frames.write(opened.frame, changed)
    for value in opened.pending:
        _real(value)


# -- finding and compiling a block ----------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One with-statement: the names its body refers to and, when it needs rewriting, its compiled body."""
    filename: str
    first_line: int                  # the body's first line, where the original is skipped
    names: tuple[str, ...]           # variables the body refers to: rebound to real values after
    code: CodeType | None = None     # the compiled body (a function of `__nnglass__` and params)
    params: tuple[str, ...] = ()     # the frame's variables the compiled body reads or sets
    reason: str | None = None        # why a block that needs compiling runs as written

    @property
    def runs_compiled(self) -> bool:
        return self.code is not None

    @property
    def defaults(self) -> tuple:
        return (UNSET,) * len(self.params)

    def as_written(self, reason: str) -> Block:
        """The same block, run as written."""
        return Block(self.filename, self.first_line, self.names, reason=reason)


# frame code -> {offset of the with: block}; weak, so code run once (exec, notebook cells) is not kept
_blocks: weakref.WeakKeyDictionary[CodeType, dict[int, Block | None]] = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakSet[CodeType] = weakref.WeakSet()  # code of compiled bodies


def _block(frame: FrameType) -> Block | None:
    """The block of the with-statement frame is entering (cached per code object and offset)."""
    code, offset = frame.f_code, frame.f_lasti
    known = _blocks.get(code)
    if known is None:
        known = _blocks[code] = {}
    elif offset in known:
        return known[offset]
    try:
        block = _read_block(frame.f_code, frame.f_lineno, frame.f_globals)
    except Exception as error:  # source we cannot handle: the block runs as written, as without source
        warnings.warn(f"nnglass could not compile the with-block at {frame.f_code.co_filename}:{frame.f_lineno} "
                      f"({error!r}); it runs as written.", stacklevel=4)
        block = None
    known[offset] = block
    return block


def _read_block(frame_code: CodeType, line: int, module_globals: dict) -> Block | None:
    """Find the with-statement at line in the file's source and compile its body if it needs it."""
    filename = frame_code.co_filename
    tree = _parse(filename, "".join(linecache.getlines(filename, module_globals)))
    node = _with_at(tree, line) if tree is not None else None
    if node is None:
        return None
    first = min([node.body[0].lineno] + [d.lineno for d in getattr(node.body[0], "decorator_list", ())])
    names = _names(node.body)
    if not _needs_compiling(node.body):
        return Block(filename, first, names)
    if first <= _header_end(node):
        return Block(filename, first, names, reason="its body is on the line of the `with`: start it on a new line")
    params = _params(node.body, names, frame_code)
    try:
        code = compile_body(copy.deepcopy(node.body), params, filename, first)
    except Unsupported as unsupported:
        return Block(filename, first, names, reason=f"{filename}:{unsupported.line}: {unsupported}")
    _COMPILED.add(code)
    return Block(filename, first, names, code, params)


@functools.lru_cache(maxsize=32)
def _parse(filename: str, source: str) -> ast.Module | None:
    if not source:
        return None
    try:
        return ast.parse(source, filename)
    except SyntaxError:
        return None


def _header_end(node: ast.With | ast.AsyncWith) -> int:
    """The last line of a with-statement's header."""
    ends = [item.context_expr.end_lineno for item in node.items]
    ends += [item.optional_vars.end_lineno for item in node.items if item.optional_vars is not None]
    return max(ends)


def _with_at(tree: ast.AST, line: int) -> ast.With | ast.AsyncWith | None:
    """The innermost with-statement whose header spans line."""
    found = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.With, ast.AsyncWith)) and node.lineno <= line <= _header_end(node):
            if found is None or node.lineno > found.lineno:
                found = node
    return found


def _names(body: list[ast.stmt]) -> tuple[str, ...]:
    """Variables the body refers to (anywhere in it, nested functions included), minus `global` ones."""
    names = {node.id for stmt in body for node in ast.walk(stmt) if isinstance(node, ast.Name)}
    names -= {name for node in walk_scope(body) if isinstance(node, ast.Global) for name in node.names}
    return tuple(sorted(name for name in names if not name.startswith("__nnglass")))


def _params(body: list[ast.stmt], names: tuple[str, ...], frame_code: CodeType) -> tuple[str, ...]:
    """The variables the compiled body takes from the frame: those it sets, and a function's locals it reads.

    Other names (globals, builtins) stay free in the compiled body, so they resolve as in the original.
    """
    written = stored(body)
    local = set()
    if frame_code.co_flags & inspect.CO_OPTIMIZED:
        local = {*frame_code.co_varnames, *frame_code.co_cellvars, *frame_code.co_freevars}
    return tuple(name for name in names if name in written or name in local)


def _needs_compiling(body: list[ast.stmt]) -> bool:
    """Whether the body has control flow, prints, f-strings or `.save()` of plain values (`list().save()`)
    that cannot run on proxies as written."""
    for node in walk_scope(body):
        if isinstance(node, (ast.If, ast.For, ast.While, ast.IfExp)) or steps_block(node):
            return True
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            return True
    return saves_plain(body)
