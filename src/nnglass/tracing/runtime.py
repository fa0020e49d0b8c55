"""What compiled with-blocks call at run time (as `__nnglass__`): each construct decides there whether
it acts on a proxy (a graph construct) or on a plain value (plain Python). See tracing/compile.py."""
from __future__ import annotations

import builtins
import operator
import re
from typing import Any, Callable

from .local import current
from .errors import TraceError
from .proxy import Proxy

__all__ = ["Runtime", "Branch", "Loop", "StepBlock", "UNSET"]

UNSET = object()   # a parameter of a compiled body whose variable did not exist


def _building(value: Any) -> bool:
    """Whether value is a proxy of a graph still being recorded."""
    return isinstance(value, Proxy) and value.experiment.building


def _apply(fn: Any, *args: Any) -> Any:
    """fn(*args) as a node of the open recorder (its arguments hold a proxy still being recorded)."""
    return current().proxy("call_function", fn, args)


def _truth(value: Any) -> Any:
    return _apply(bool, value) if _building(value) else bool(value)


def _is_session(context: Any) -> bool:
    """A session (loops record once and run per item) rather than a trace (loops are unrolled)."""
    return not hasattr(context, "invoke")


_ADVICE = {
    "while": "`while` on a proxy cannot be compiled: the loop would have to run before the model does. "
             "Loop over a `range(...)` with an `if` inside, or over a proxy inside `model.session()`.",
    "ifexp": "`a if <proxy> else b` cannot be compiled: write an `if` statement instead.",
}


class Runtime:
    """What compiled code calls (as `__nnglass__`): the run-time half of each compiled construct."""

    unset = UNSET

    def __init__(self, filename: str, keep: Callable[[Any], Any], kept: list) -> None:
        self.filename = filename
        self.keep = keep  # nnglass.save
        self.kept = kept  # the plain values the block gave nnglass.save
        self.loops: list[Loop] = []   # open loops, innermost last
        self.branches: list[Branch] = []   # open branches on proxies, innermost last

    def saved(self, value: Any) -> bool:
        """Whether value is a saved proxy, or a plain value given to nnglass.save."""
        return value.node.saved if isinstance(value, Proxy) else any(kept is value for kept in self.kept)

    def error(self, line: int, message: str) -> TraceError:
        return TraceError(f"{self.filename}:{line}: {message}")

    def scope(self) -> Any:
        """What records conditions and logs now: the innermost session loop of the open context, or the context."""
        context = current()
        loop = next((loop for loop in reversed(self.loops) if loop.iterator is not None), None)
        return loop.iterator if loop is not None and loop.owner is context else context

    def branch(self, test: Any, line: int) -> Branch:
        return Branch(self, test, self.error(line, ""))

    def loop(self, iterable: Any, line: int) -> Loop:
        return Loop(self, iterable, line)

    def steps(self, context: Any) -> StepBlock:
        return StepBlock(context)

    def plain(self, test: Any, kind: str, line: int) -> Any:
        """test itself, which must not be a proxy here."""
        if _building(test):
            raise self.error(line, _ADVICE[kind])
        return test

    def unpack(self, item: Any, count: int, line: int) -> Any:
        """A loop item for a target of count names: a proxy gives its first count elements."""
        if not _building(item):
            return item
        if self.loops[-1].iterator is None:
            try:
                length = operator.index(item.shape[0])
            except Exception:
                raise self.error(line, f"cannot unpack a proxy into {count} names: its length is not known "
                                       f"while tracing. Index it instead.") from None
            if length != count:
                raise self.error(line, f"cannot unpack a proxy of length {length} into {count} names.")
        return tuple(item[i] for i in range(count))

    def not_(self, value: Any) -> Any:
        return _apply(operator.not_, value) if _building(value) else not value

    def and_(self, left: Any, right: Callable[[], Any]) -> Any:
        if not _building(left):
            return left and right()
        return _apply(operator.and_, _apply(bool, left), _truth(right()))

    def or_(self, left: Any, right: Callable[[], Any]) -> Any:
        if not _building(left):
            return left or right()
        return _apply(operator.or_, _apply(bool, left), _truth(right()))

    def save(self, value: Any) -> Any:
        """`value.save()`: its own save (a proxy's), else nnglass.save (a list, a shape): as nnsight 0.5,
        where every object has a `.save()`."""
        own = getattr(value, "save", None)
        return own() if callable(own) else self.keep(value)

    def print(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """print now, or as a log node when it prints proxies, is under a proxy condition or in a session loop."""
        deferred = self.branches or any(loop.iterator is not None or loop.guards for loop in self.loops)
        if fn is not builtins.print or not (deferred or any(_building(a) for a in args)):
            return fn(*args, **kwargs)
        if kwargs:
            raise TraceError("print(..., sep=, end=, file=) of a proxy cannot be compiled: print the values only, "
                             "or build one string with an f-string.")
        self.scope().log(*args)

    def fstring(self, *parts: Any) -> Any:
        """The f-string of parts (literal strings and (value, conversion, spec)); a proxy of it if a value is one."""
        if not any(type(part) is tuple and _building(part[0]) for part in parts):
            return join_fields(*parts)
        return _apply(join_fields, *parts)


def join_fields(*parts: Any) -> str:
    """An f-string from literal strings and (value, conversion, spec) fields: no field names, so no attribute
    access (unlike str.format), and widths capped, so a graph cannot make a huge string."""
    out = []
    for part in parts:
        if type(part) is str:
            out.append(part)
            continue
        value, conversion, spec = part
        if not isinstance(spec, str) or any(int(n) > _MAX_WIDTH for n in re.findall(r"\d+", spec)):
            raise ValueError(f"an f-string format spec must be a string with numbers up to {_MAX_WIDTH}")
        out.append(format(_convert(value, conversion), spec))
    return "".join(out)


_MAX_WIDTH = 10_000


def _convert(value: Any, conversion: int) -> Any:
    """An f-string field's `!r`, `!s`, `!a` conversion (-1: none)."""
    return {-1: lambda v: v, 115: str, 114: repr, 97: ascii}[conversion](value)


class StepBlock:
    """`with tracer.all():` or `with tracer.iter[...]:` in a compiled body: a context that gives steps
    (`block_steps()`) has its body recorded once per step; any other is entered as written, its body once."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.each: Any = None

    def __enter__(self) -> Any:
        steps = getattr(self.context, "block_steps", None)
        self.each = steps() if steps is not None else None
        if self.each is not None:
            return self.each
        return (type(self.context).__enter__(self.context),)

    def __exit__(self, *exc: Any) -> Any:
        return None if self.each is not None else type(self.context).__exit__(self.context, *exc)


class Branch:
    """`if` in a compiled body: a condition of the graph on a proxy, a plain `if` otherwise."""

    def __init__(self, runtime: Runtime, test: Any, where: TraceError) -> None:
        self.runtime = runtime
        self.where = str(where)   # "file:line: " of the if
        self.on_proxy = _building(test)
        self.test = test if self.on_proxy else bool(test)
        self.condition: Any = None
        self.in_else = False
        self.jumps: list[tuple[Loop, str, bool]] = []   # (loop, "break"/"continue", from the else-branch)
        self.values: dict[str, dict[str, Any]] = {"before": {}, "kept": {}}  # variables before / after the if-branch

    def __enter__(self) -> Branch:
        return self

    def then(self) -> bool:
        """Whether to record the if-branch (always, under the condition, for a proxy)."""
        if not self.on_proxy:
            return self.test
        self.open(self.test)
        return True

    def orelse(self) -> bool:
        """Whether to record the else-branch (always, under the negated condition, for a proxy)."""
        if not self.on_proxy:
            return not self.test
        self.close()
        self.in_else = True
        self.open(_apply(operator.not_, self.test))
        return True

    def open(self, condition: Any) -> None:
        self.condition = self.runtime.scope().cond(condition)
        self.condition.__enter__()
        self.runtime.branches.append(self)

    def close(self) -> None:
        if self.condition is not None:
            self.condition.__exit__(None, None, None)
            self.condition = None
            self.runtime.branches.pop()

    def before(self, name: str, value: Any) -> None:
        """Note a variable's value before the if."""
        self.values["before"][name] = value

    def kept(self, name: str, value: Any) -> None:
        """Note a variable's value at the end of the if-branch."""
        self.values["kept"][name] = value

    def merged(self, name: str, value: Any, in_then: bool, in_else: bool) -> Any:
        """A variable either branch sets, after the if: as it is after a plain `if`; after one on a proxy, the
        value of the branch that ran (a graph node). Unset before and in one branch, it stays as Python leaves it."""
        if not self.on_proxy:
            return value
        before = self.values["before"].get(name, UNSET)
        then = self.values["kept"].get(name, UNSET) if in_then else before
        otherwise = value if in_else else before
        if then is UNSET or otherwise is UNSET or then is otherwise:
            return value
        picked = current().proxy("pick", None, (self.test, then, otherwise))
        saved = self.runtime.saved(then) or self.runtime.saved(otherwise)
        return picked.save() if saved else picked  # `y = x.save()` (or `nnglass.save(1)`) in a branch

    def __exit__(self, kind: Any, *exc: Any) -> None:
        """Close the condition; a loop left by `break`/`continue` in a branch goes on only where it was not taken."""
        self.close()
        for loop, word, from_else in self.jumps if kind is None else ():
            loop.go_on(self.test if from_else else _apply(operator.not_, self.test), word)


class Loop:
    """`for` (or `while`) in a compiled body: over a proxy a session loop or an unrolled one, else a plain loop.

    `break` or `continue` directly under an `if` on a proxy is recorded as a guard: the rest of the
    loop (for `break`) or of this iteration (for `continue`) runs only where the `if` did not jump.
    """

    def __init__(self, runtime: Runtime, iterable: Any, line: int) -> None:
        self.runtime = runtime
        self.iterable = iterable
        self.line = line
        self.owner = current()
        self.iterator: Any = None        # the session loop's context, for a proxy in a session
        self.depth = len(runtime.branches)
        self.guards: list[tuple[Any, Any, str]] = []   # open (condition context, condition, word)

    def __enter__(self) -> Loop:
        self.runtime.loops.append(self)
        return self

    def __iter__(self) -> Any:
        if not _building(self.iterable):
            return self.iterations(self.iterable)
        if _is_session(self.owner):
            item, self.iterator = self.owner.iter(self.iterable, return_context=True).__enter__()
            return iter([item])
        return self.iterations(self.unrolled())

    def iterations(self, items: Any) -> Any:
        """items, ending each iteration's `continue` guards before the next one starts."""
        for item in items:
            yield item
            if self.guards:
                self.end_iteration()

    def unrolled(self) -> Any:
        """The items of a proxy in a trace, one proxy each, by its length known while tracing."""
        try:
            length = operator.index(self.iterable.shape[0])
        except Exception:
            raise self.runtime.error(self.line, "a loop over a proxy inside a trace needs its length while tracing, "
                                                "from `.shape[0]`, and this value has none. Loop over "
                                                "`range(n)` and index it, or loop inside `model.session()`.") from None
        return (self.iterable[i] for i in range(length))

    def break_(self, line: int) -> bool:
        """Whether to really `break`: a session loop records `iterator.exit()` instead."""
        if self.iterator is not None:
            self.iterator.exit()
            return False
        return self.jump("break", line)

    def continue_(self, line: int) -> bool:
        return self.jump("continue", line)

    def jump(self, word: str, line: int) -> bool:
        """Whether to really jump: under one `if` on a proxy, the jump becomes a guard when that `if` ends."""
        depth = len(self.runtime.branches) - self.depth
        if depth == 0:
            return True
        if depth > 1:
            raise self.runtime.error(line, f"`{word}` under nested `if`s on proxies cannot be compiled: the graph "
                                           f"cannot tell where the loop stopped. Combine the conditions into one "
                                           f"`if` (with `and`), or guard the rest of the loop with `if not ...:`.")
        if self.iterable is None and word == "continue":
            raise self.runtime.error(line, "`continue` under an `if` on a proxy in a `while` loop cannot be "
                                           "compiled: loop with `for` over a `range(...)` instead.")
        branch = self.runtime.branches[-1]
        branch.jumps.append((self, word, branch.in_else))
        return False

    def go_on(self, condition: Any, word: str) -> None:
        """Record the rest of the loop (or of this iteration) under condition."""
        context = self.runtime.scope().cond(condition)
        context.__enter__()
        self.guards.append((context, condition, word))

    def close_guards(self) -> list[tuple[Any, Any, str]]:
        closed, self.guards = self.guards, []
        for context, _, _ in reversed(closed):
            context.__exit__(None, None, None)
        return closed

    def end_iteration(self) -> None:
        """Close this iteration's guards; the guards of `break`s stay for the iterations left."""
        for _, condition, word in self.close_guards():
            if word == "break":
                self.go_on(condition, word)

    def __exit__(self, *exc: Any) -> None:
        self.close_guards()
        self.runtime.loops.pop()
        if self.iterator is not None:
            self.iterator.__exit__(*exc)


