"""Source: the calls inside a module's forward (and inside functions it calls) as addressable points.

A forward's source is parsed once per function and every call (and arithmetic operator) in it is
rewritten to `__nnglass_source__("name", f, *args)`. Each name gets an `OperationPoint`, a tiny
module that makes the call, so the engine's ordinary hooks give `.input`/`.inputs`/`.output`,
invoke narrowing, call indices, early stop and remote for free. A point's path is its module's
path plus `.source.<name>` (nested: `...source.<name>.source.<inner>`); the rewritten forward is
installed on the instance only while a trace that uses its points runs.
"""
from __future__ import annotations

import __future__
import ast
import builtins
import functools
import inspect
import operator
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..tracing.errors import TraceError
from ..tracing.local import current

__all__ = ["OperationPoint", "Source", "SourceEnvoy", "rewrite", "source_of", "nested_source", "source_envoy",
           "ensure", "activate", "ForwardSwap"]

_ROUTER, _OPS, _FACTORY = "__nnglass_source__", "__nnglass_ops__", "__nnglass_factory__"
_DEPTH = 8  # the most `.source` levels in one path
_SKIP = {"super", "locals", "globals", "vars", "eval", "exec", "dir"}  # calls that need the caller's frame
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.MatMult: "matmul", ast.Div: "truediv",
           ast.FloorDiv: "floordiv", ast.Mod: "mod", ast.Pow: "pow"}


# -- parsing and rewriting (once per function) ------------------------------------------------------
@dataclass
class Rewrite:
    """A function's points (name -> line and called expression), source lines and rewritten factory."""

    names: dict[str, tuple[int, ast.expr | None]]
    lines: list[str]
    first_line: int
    tree: ast.FunctionDef
    factory: Callable[..., Callable]


def _call_name(func: ast.expr) -> str:
    """`self.q_proj` -> "self_q_proj", `apply_rotary_pos_emb` -> itself, `x.view` on a call -> "view"."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    elif not parts:
        parts.append("call")
    else:
        parts = parts[:1]
    return "_".join(reversed(parts))


class _Namer(ast.NodeTransformer):
    """Rewrites calls and operators to the router, naming each `<callee>_<index>` in source order."""

    def __init__(self, order: dict[int, str]) -> None:
        self.order = order
        self.names: dict[str, tuple[int, ast.expr | None]] = {}

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if id(node) not in self.order:
            return node
        name = self.order[id(node)]
        self.names[name] = (node.lineno, node.func)
        return ast.Call(ast.Name(_ROUTER, ast.Load()), [ast.Constant(name), node.func, *node.args], node.keywords)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if id(node) not in self.order:
            return node
        name = self.order[id(node)]
        self.names[name] = (node.lineno, None)
        op = ast.Attribute(ast.Name(_OPS, ast.Load()), _BINOPS[type(node.op)], ast.Load())
        return ast.Call(ast.Name(_ROUTER, ast.Load()), [ast.Constant(name), op, node.left, node.right], [])


def _order(tree: ast.FunctionDef) -> dict[int, str]:
    """Names of the rewritable calls and operators of a function body, numbered in source order."""
    found = []
    for statement in tree.body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SKIP):
                found.append((node.lineno, node.col_offset, id(node), _call_name(node.func)))
            elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
                found.append((node.lineno, node.col_offset, id(node), _BINOPS[type(node.op)]))
    counts: dict[str, int] = {}
    order = {}
    for _, _, key, base in sorted(found):
        order[key] = f"{base}_{counts.get(base, 0)}"
        counts[base] = counts.get(base, 0) + 1
    return order


@functools.cache
def rewrite(fn: types.FunctionType) -> Rewrite:
    """Parse and rewrite a plain function once (cached per function); keeps its file and line numbers."""
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError) as error:
        raise TraceError(f"The source of {fn!r} is not available, so its calls cannot be addressed.") from error
    tree = ast.parse(textwrap.dedent("".join(lines))).body[0]
    if not isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TraceError(f"{fn!r} is not defined by a `def` statement; only those have a `.source`.")
    namer = _Namer(_order(tree))
    tree.body = [namer.visit(statement) for statement in tree.body]
    factory = _compile(tree, fn.__code__.co_freevars, fn, first)
    original = ast.parse(textwrap.dedent("".join(lines))).body[0]
    names = {name: (line + first - 1, func) for name, (line, func) in namer.names.items()}
    return Rewrite(names, [line.rstrip("\n") for line in lines], first, original, factory)


def _compile(tree: ast.FunctionDef, freevars: tuple[str, ...], fn: types.FunctionType, first: int) -> Callable:
    """A factory `(router, ops, *freevars) -> rewritten function`, compiled with the original line numbers."""
    tree.decorator_list = []  # the original's decorators wrap the rewritten function in `_decorated`
    params = [ast.arg(name) for name in (_ROUTER, _OPS, *freevars)]
    factory = ast.FunctionDef(_FACTORY, ast.arguments([], params, None, [], [], None, []),
                              [tree, ast.Return(ast.Name(tree.name, ast.Load()))], [], None, None)
    module = ast.Module([factory], [])
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, first - 1)
    namespace: dict[str, Any] = {}
    code = compile(module, inspect.getsourcefile(fn) or "<source>", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)  # annotations stay unevaluated
    exec(code, fn.__globals__, namespace)
    return namespace[_FACTORY]


def _plain(fn: Any) -> tuple[types.FunctionType, Any]:
    """A callable's plain function and what it is bound to (None for a plain function)."""
    if isinstance(fn, types.MethodType):
        return inspect.unwrap(fn.__func__), fn.__self__
    if isinstance(fn, types.FunctionType):
        return inspect.unwrap(fn), None
    if isinstance(fn, torch.nn.Module):
        wrapped = _wrapped_function(fn)
        if wrapped is None:
            raise TraceError("This call is a module: address it through its envoy (e.g. `model.layer.q_proj.source`).")
        return inspect.unwrap(wrapped), None
    raise TraceError(f"{fn!r} has no Python source (a builtin or compiled function), so it has no `.source`.")


def _wrapped_function(module: torch.nn.Module) -> types.FunctionType | None:
    """The function a function-made-module runs (the kernels hub's `Func`, as transformers 5 wraps
    `apply_rotary_pos_emb`): its source is the function's, and reading it runs the function itself."""
    forward = type(module).forward
    cells = dict(zip(forward.__code__.co_freevars, forward.__closure__ or ()))
    func = cells.get("func")
    return func.cell_contents if func is not None and isinstance(func.cell_contents, types.FunctionType) else None


def _function_of(fn: Any) -> Any:
    """The function a call runs, seen through a bound method, decorators and a function-made-module."""
    if isinstance(fn, torch.nn.Module):
        fn = _wrapped_function(fn) or fn
    return inspect.unwrap(getattr(fn, "__func__", fn))


# -- points and their sources ---------------------------------------------------------------------
class OperationPoint(torch.nn.Module):
    """One call inside a forward, made through this module so that the engine's hooks see it."""

    def __init__(self, name: str, source: Source) -> None:
        super().__init__()
        self.name = name
        self.fn: Any = None
        self.nested: Source | None = None
        self.__dict__["source"] = source     # the source it belongs to (not a submodule)
        self.__dict__["root"] = source.root  # the module whose forward is rewritten

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise TraceError(f"'{self.name}' is a call inside a forward: it cannot be called on its own.")
        if self.nested is None:
            return self.fn(*args, **kwargs)
        if _function_of(self.fn) is not self.nested.fn:
            called = getattr(self.fn, "__qualname__", type(self.fn).__name__)
            raise TraceError(f"'{self.name}' called {called} when the model ran, not {self.nested.fn.__qualname__}, "
                             f"whose `.source` the trace addressed.")
        return self.nested.rewritten(self.fn)(*args, **kwargs)

    def run(self, fn: Any, args: tuple, kwargs: dict) -> Any:
        """Call fn(*args, **kwargs) through this module (re-entrant)."""
        outer, self.fn = self.fn, fn
        try:
            return self(*args, **kwargs)
        finally:
            self.fn = outer

    def extra_repr(self) -> str:
        return self.name


class Source:
    """The points of one function (a module's forward, or a function a point calls) and its rewrite."""

    def __init__(self, fn: types.FunctionType, path: str, root: torch.nn.Module, owner: Any = None) -> None:
        self.fn = fn
        self.path = path            # "<module path>.source" (or "<point path>.source")
        self.root = root
        self.owner = owner          # the module the forward belongs to (resolves `self.x` callees)
        self.plan = rewrite(fn)
        self.points: dict[str, OperationPoint] = {}
        self.bound: dict[types.FunctionType, Callable] = {}

    def __reduce__(self) -> tuple:
        return _forgotten, ()

    def point(self, name: str) -> OperationPoint:
        """The point of a call by name (made on first use)."""
        if name not in self.plan.names:
            raise AttributeError(f"'{self.path}' has no operation '{name}'; "
                                 f"its operations are: {', '.join(self.plan.names)}.")
        if name not in self.points:
            self.points[name] = OperationPoint(name, self)
        return self.points[name]

    def route(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """What a rewritten call runs: through its point when one is in use, else directly."""
        point = self.points.get(name)
        if point is None:
            return fn(*args, **kwargs)
        return point.run(fn, args, kwargs)

    def rewritten(self, fn: Any) -> Callable:
        """fn, rewritten to route its calls through this source's points (cached per function)."""
        plain, bound_to = _plain(fn)
        function = self.bound.get(plain)
        if function is None:
            function = self.bound[plain] = self.build(plain)
        return function if bound_to is None else types.MethodType(function, bound_to)

    def build(self, plain: types.FunctionType) -> Callable:
        plan = rewrite(plain)
        cells = [cell.cell_contents for cell in plain.__closure__ or ()]
        function = plan.factory(self.route, operator, *cells)
        function.__defaults__, function.__kwdefaults__ = plain.__defaults__, plain.__kwdefaults__
        return function

    def callee(self, name: str) -> Any:
        """The function a named call makes, found from the source (a global, `self.x`, or a local's assignment)."""
        _, func = self.plan.names[name]
        if func is None:
            raise TraceError(f"'{name}' is an operator; it has no `.source`.")
        scope = {**vars(builtins), **self.fn.__globals__, "self": self.owner}
        for expression in (func, _assigned(self.plan.tree, func)):
            if expression is None:
                break
            try:
                return eval(compile(ast.Expression(expression), "<callee>", "eval"), scope)
            except NameError:
                continue
            except Exception as error:
                raise TraceError(f"Cannot tell which function '{name}' calls: {error}") from error
        method = _tensor_method(func)
        if method is not None:
            return method
        raise TraceError(f"Cannot tell which function '{name}' calls from the source.")

    def __str__(self) -> str:
        by_line: dict[int, list[str]] = {}
        for name, (line, _) in self.plan.names.items():
            by_line.setdefault(line, []).append(name)
        width = max((len(n) for n in self.plan.names), default=0)
        rows = []
        for number, text in enumerate(self.plan.lines, self.plan.first_line):
            names = by_line.get(number, [""])
            rows.append(f"{names[0]:>{width}} {'->' if names[0] else '  '} {number:4d} {text}")
            rows.extend(f"{extra:>{width}} -> {'':4} {'':{len(text) - len(text.lstrip())}}^" for extra in names[1:])
        return "\n".join(rows)


def _tensor_method(func: ast.expr) -> types.FunctionType | None:
    """For `value.method(...)` whose value is known only at run time: torch.Tensor's method of that name, where
    it is written in Python (a call on a tensor, as in a forward; the point checks the receiver when it runs)."""
    if not isinstance(func, ast.Attribute):
        return None
    method = inspect.getattr_static(torch.Tensor, func.attr, None)
    return method if isinstance(method, types.FunctionType) else None


def _assigned(tree: ast.FunctionDef, func: ast.expr) -> ast.expr | None:
    """The expression a local name in func was last assigned from in the function, if any."""
    if not isinstance(func, ast.Name):
        return None
    found = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == func.id for t in node.targets):
            found = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == func.id:
            found = node.value
    return found


_KEPT_AS = "_nnglass_source"  # where a module instance keeps its Source (in its __dict__, not a submodule)


def source_of(module: torch.nn.Module, path: str) -> Source:
    """The source of a module's forward (one per module instance; the rewrite is shared per class)."""
    source = module.__dict__.get(_KEPT_AS)
    if source is None:
        plain, _ = _plain(type(module).forward.__get__(module))
        source = module.__dict__[_KEPT_AS] = Source(plain, f"{path}.source" if path else "source", module, module)
    return source


def _forgotten() -> None:
    """What a pickled or copied Source becomes: nothing (the copy makes its own on first use)."""
    return None


def nested_source(point: OperationPoint) -> Source:
    """The source of the function a point calls (the point then runs that function rewritten)."""
    if point.nested is None:
        plain, bound_to = _plain(point.source.callee(point.name))
        point.nested = Source(plain, f"{point.source.path}.{point.name}.source", point.root, bound_to)
    return point.nested


def _source(module: torch.nn.Module, path: str) -> Source:
    """A module's forward source, or for a point the source of the function it calls."""
    return nested_source(module) if isinstance(module, OperationPoint) else source_of(module, path)


# -- paths: registration on a model and activation during a run -------------------------------------
def ensure(modules: dict[str, torch.nn.Module], path: Any) -> None:
    """Put the module at path (and those above it) in modules, if it names one.

    That is a point at a `....source.<name>` path, or a module attached after the model was wrapped
    (`model.layers[0]._module.add_module("sae", sae)`).
    """
    if not isinstance(path, str) or path in modules or path.count("source.") > _DEPTH:
        return
    head, found, name = path.rpartition(".source.")
    if not found and path.startswith("source."):
        head, name = "", path[len("source."):]
    elif not found:
        return _ensure_attached(modules, path)
    elif "." in name:
        return
    ensure(modules, head)
    if head not in modules:
        return
    try:
        modules[path] = _source(modules[head], head).point(name)
    except (AttributeError, TraceError):
        return  # not a point: the caller reports the unknown path


def _ensure_attached(modules: dict[str, torch.nn.Module], path: str) -> None:
    """Put a child module that is not yet in modules (one attached after wrapping) there, by its parent."""
    head, _, name = path.rpartition(".")
    ensure(modules, head)
    child = modules[head]._modules.get(name) if head in modules else None
    if child is not None:
        modules[path] = child


class ForwardSwap:
    """A module's forward replaced for one run (source points, `.skip()`); `.remove()` puts it back.

    An instance forward set before (accelerate's hooks set one) is what comes back.
    """

    def __init__(self, module: torch.nn.Module, forward: Callable) -> None:
        self.module = module
        self.saved = module.__dict__.get("forward")
        module.forward = forward

    def remove(self) -> None:
        if self.saved is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self.saved


def activate(modules: dict[str, torch.nn.Module], paths: Any) -> list[ForwardSwap]:
    """Install the rewritten forward on each module that owns a point among paths; handles undo it."""
    roots = {id(m.root): m.root for p in paths if isinstance(m := modules.get(p), OperationPoint)}
    return [ForwardSwap(root, types.MethodType(_decorated(root.__dict__[_KEPT_AS], root), root))
            for root in roots.values()]


def _decorated(source: Source, root: torch.nn.Module) -> Callable:
    """The class forward's decorators (e.g. keyword renames) around the rewritten plain forward."""
    plain = source.rewritten(source.fn)
    outer = type(root).forward
    chain = []
    while hasattr(outer, "__wrapped__"):
        chain.append(outer)
        outer = outer.__wrapped__
    if not chain:
        return plain
    return _rewrap(chain, plain)


def _rewrap(chain: list[Callable], plain: Callable) -> Callable:
    """Run each wrapper of chain with its innermost function swapped for plain (wrappers call `__wrapped__`
    through their closure, so the wrapper functions are copied with that closure cell replaced)."""
    inner = plain
    for wrapper in reversed(chain):
        inner = _with_inner(wrapper, wrapper.__wrapped__, inner)
    return inner


def _with_inner(wrapper: Callable, old: Callable, new: Callable) -> Callable:
    """A copy of wrapper whose closure holds new where it held old."""
    closure = getattr(wrapper, "__closure__", None) or ()
    if not any(cell.cell_contents is old for cell in closure):
        raise TraceError(f"The forward's decorator {wrapper!r} does not keep the function it wraps in a "
                         f"closure, so its `.source` cannot run under it.")
    cells = tuple(types.CellType(new) if cell.cell_contents is old else cell for cell in closure)
    copy = types.FunctionType(wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, cells)
    copy.__kwdefaults__ = wrapper.__kwdefaults__
    return functools.update_wrapper(copy, new)


# -- what the user sees: `envoy.source` -----------------------------------------------------------
class SourceEnvoy:
    """`envoy.source`: its points as attributes (envoys with `.output`, `.inputs`, `.source`); prints the forward."""

    def __init__(self, source: Source, envoy_type: type) -> None:
        self._source = source
        self._envoy_type = envoy_type
        self._envoys: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = f"{self._source.path}.{name}"
        point = self._source.point(name)
        modules = getattr(getattr(current(), "model", None), "_modules_by_path", None)
        if modules is not None:
            modules.setdefault(path, point)  # the trace's scan and run find it by path
        if name not in self._envoys:
            self._envoys[name] = self._envoy_type(point, path)
        return self._envoys[name]

    def __dir__(self) -> list[str]:
        return list(self._source.plan.names)

    def __repr__(self) -> str:
        return str(self._source)


def source_envoy(envoy: Any, envoy_type: type) -> SourceEnvoy:
    """What `envoy.source` returns: the points of the module's forward (of a point: of its callee)."""
    return SourceEnvoy(_source(envoy._module, envoy._path), envoy_type)
