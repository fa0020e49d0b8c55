"""Rewrite: a with-block's control flow, prints and f-strings as calls of the Runtime, compiled.

The statements of a body become a function `__nnglass_body__(__nnglass__, *names)` that returns its
locals; `__nnglass__` is the Runtime (tracing/runtime.py) that decides at run time what each `if`,
`for`, `while`, `break`/`continue`, `print` and f-string does with proxies (see tracing/compile.py).
"""
from __future__ import annotations

import ast
from types import CodeType
from typing import Iterator

__all__ = ["BODY", "RUNTIME", "Unsupported", "compile_body", "stored", "walk_scope", "saves_plain"]

BODY = "__nnglass_body__"   # the compiled function's name
RUNTIME = "__nnglass__"     # its first parameter: the Runtime


class Unsupported(Exception):
    """A construct that cannot be compiled, at a line of the user's source."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def walk_scope(nodes: list[ast.AST]) -> Iterator[ast.AST]:
    """Every node of these statements, not descending into nested functions and classes."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def stored(body: list[ast.stmt]) -> set[str]:
    """Variables the statements set (not counting nested functions and classes)."""
    return {node.id for node in walk_scope(body) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)}


_PLAIN_MAKERS = frozenset({"list", "dict", "set", "tuple", "int", "float", "str", "bool", "len"})
_DESCRIPTIONS = frozenset({"shape", "ndim", "dtype", "device"})  # plain values while recording


def steps_block(node: ast.AST) -> bool:
    """Whether node is `with <x>.all():` or `with <x>.iter[...]:` (one item; no break or continue of an
    enclosing loop inside), whose body nnsight 0.5 runs once per generation step."""
    if not isinstance(node, ast.With) or len(node.items) != 1 or _jumps(node.body):
        return False
    context = node.items[0].context_expr
    if isinstance(context, ast.Call) and not context.args and not context.keywords:
        return isinstance(context.func, ast.Attribute) and context.func.attr == "all"
    return isinstance(context, ast.Subscript) and isinstance(context.value, ast.Attribute) \
        and context.value.attr == "iter"


def _jumps(body: list[ast.stmt]) -> bool:
    """Whether the statements break or continue a loop around them."""
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Break, ast.Continue)):
            return True
        if isinstance(node, (ast.For, ast.While, ast.AsyncFor)):
            stack.extend(node.orelse)  # a jump in the loop's own body is its own
        elif not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _bare_save(node: ast.AST) -> bool:
    """Whether node is `<expr>.save()`, with no arguments."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save"
            and not node.args and not node.keywords)


def _plain(expr: ast.expr) -> bool:
    """Whether expr gives a plain value while recording: a literal, `list()`, `len(...)`, `.shape[...]`."""
    if isinstance(expr, (ast.List, ast.Dict, ast.Set, ast.Tuple, ast.Constant, ast.ListComp, ast.DictComp)):
        return True
    if isinstance(expr, ast.Call):
        return isinstance(expr.func, ast.Name) and expr.func.id in _PLAIN_MAKERS
    if isinstance(expr, ast.Subscript):
        return _plain(expr.value)
    return isinstance(expr, ast.Attribute) and expr.attr in _DESCRIPTIONS


def saves_plain(body: list[ast.stmt]) -> bool:
    """Whether the statements call `.save()` on a plain value (`list().save()`, or `xs.save()` after
    `xs = []`), which only a compiled body can run."""
    nodes = list(walk_scope(body))
    names = {target.id for node in nodes if isinstance(node, ast.Assign) and _plain(node.value)
             for target in node.targets if isinstance(target, ast.Name)}
    return any(_bare_save(node) and (_plain(node.func.value) or isinstance(node.func.value, ast.Name)
                                     and node.func.value.id in names) for node in nodes)


def compile_body(body: list[ast.stmt], names: tuple[str, ...], filename: str, first: int) -> CodeType:
    """The rewritten body as the code of `def __nnglass_body__(__nnglass__, *names): ...; return locals()`."""
    rewritten = _Rewriter().block(body)
    function = ast.FunctionDef(
        name=BODY, args=ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in (RUNTIME, *names)],
                                       kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=_unset_prologue(names) + rewritten + [ast.Return(_call(_name("locals"), []))],
        decorator_list=[], returns=None, type_comment=None)
    module = ast.Module([ast.copy_location(function, body[0])], type_ignores=[])
    ast.fix_missing_locations(module)  # new nodes get their parent's line: errors show the user's lines
    try:
        module_code = compile(module, filename, "exec")
    except SyntaxError as error:
        raise Unsupported(error.lineno or first, f"cannot compile this with-block: {error.msg}") from None
    return next(c for c in module_code.co_consts if isinstance(c, CodeType))


def _unset_prologue(names: tuple[str, ...]) -> list[ast.stmt]:
    """`if x is __nnglass__.unset: del x` for each name: variables that did not exist stay unbound."""
    return [ast.If(ast.Compare(_name(n), [ast.Is()], [_attr(_name(RUNTIME), "unset")]),
                   [ast.Delete([ast.Name(n, ast.Del())])], []) for n in names]


def _name_error() -> ast.ExceptHandler:
    """`except NameError: pass`."""
    return ast.ExceptHandler(_name("NameError"), None, [ast.Pass()])


def _name(name: str) -> ast.Name:
    return ast.Name(name, ast.Load())


def _attr(value: ast.expr, name: str) -> ast.Attribute:
    return ast.Attribute(value, name, ast.Load())


def _call(func: ast.expr, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func, args, [])


def _runtime(method: str, *args: ast.expr) -> ast.Call:
    return _call(_attr(_name(RUNTIME), method), list(args))


_NOT_IN_BLOCK = {
    ast.Return: "it has a `return`: assign the result and return after the block",
    ast.Yield: "it has a `yield`: collect the values and yield after the block",
    ast.YieldFrom: "it has a `yield from`: yield after the block",
    ast.Await: "it has an `await`: await before or after the block",
    ast.Nonlocal: "it has a `nonlocal` statement: declare the name before the block",
}


class _Rewriter(ast.NodeTransformer):
    """Rewrites control flow, prints and f-strings of a body into calls of the Runtime (`__nnglass__`)."""

    def __init__(self) -> None:
        self.count = 0
        self.loops: list[str] = []   # names of the enclosing loops' Loop objects, innermost last

    def fresh(self, kind: str) -> str:
        self.count += 1
        return f"__nnglass_{kind}{self.count}"

    def block(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        """The rewritten statements of a block."""
        out: list[ast.stmt] = []
        for statement in statements:
            new = self.visit(statement)
            out.extend(new if isinstance(new, list) else [new])
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        message = _NOT_IN_BLOCK.get(type(node))
        if message is not None:
            raise Unsupported(node.lineno, message)
        return super().generic_visit(node)

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node   # runs later, maybe outside any trace: left as written

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> list[ast.stmt]:
        """`if c: A else: B` -> `with rt.branch(c) as b: (if b.then(): A) (if b.orelse(): B)`; each variable
        either branch sets is noted before and after A, and merged after the if (on a proxy, by the branch that ran)."""
        name = self.fresh("branch")
        in_then, in_else = stored(node.body), stored(node.orelse)
        names = sorted(in_then | in_else)
        test = self.truth(self.visit(node.test))
        then = self.block(node.body) + [self.noted(node, name, "kept", var) for var in sorted(in_then)]
        body = [*(self.noted(node, name, "before", var) for var in names),
                ast.If(_call(_attr(_name(name), "then"), []), then, [])]
        if node.orelse:
            body.append(ast.If(_call(_attr(_name(name), "orelse"), []), self.block(node.orelse), []))
        call = _runtime("branch", test, ast.Constant(node.lineno))
        merges = [self.merged(node, name, var, var in in_then, var in in_else) for var in names]
        return [self.within(node, call, name, body), *merges]

    def noted(self, node: ast.If, branch: str, method: str, var: str) -> ast.Try:
        """`try: b.<method>("var", var) except NameError: pass` (a variable not set yet is not noted)."""
        call = ast.Expr(_call(_attr(_name(branch), method), [ast.Constant(var), _name(var)]))
        return ast.copy_location(ast.Try([call], [_name_error()], [], []), node)

    def merged(self, node: ast.If, branch: str, var: str, in_then: bool, in_else: bool) -> ast.Try:
        """`try: var = b.merged("var", var, in_then, in_else) except NameError: pass`, after the if."""
        flags = [ast.Constant(in_then), ast.Constant(in_else)]
        value = _call(_attr(_name(branch), "merged"), [ast.Constant(var), _name(var), *flags])
        assign = ast.Assign([ast.Name(var, ast.Store())], value)
        return ast.copy_location(ast.Try([assign], [_name_error()], [], []), node)

    def visit_With(self, node: ast.With) -> ast.stmt:
        """`with tracer.all() as v: A` -> `with rt.steps(ctx) as s: for v in s: A`: a step context records
        A once per step (nnsight 0.5 runs the body per step: a plain list appended to gets one item a step)."""
        if not steps_block(node):
            return self.generic_visit(node)
        name = self.fresh("steps")
        item = node.items[0]
        target = item.optional_vars or ast.Name(self.fresh("step"), ast.Store())
        loop = ast.For(target, _name(name), self.block(node.body), [])
        return self.within(node, _runtime("steps", self.visit(item.context_expr)), name, [loop])

    def visit_For(self, node: ast.For) -> ast.With:
        """`for x in it: A` -> `with rt.loop(it) as l: for x in l: A` (break and continue ask l first)."""
        name = self.fresh("loop")
        iterable = self.visit(node.iter)
        target, body = self.unpacking(node)
        loop = ast.For(target, _name(name), body + self.loop_body(name, node.body), self.block(node.orelse), None)
        return self.within(node, _runtime("loop", iterable, ast.Constant(node.lineno)), name, [loop])

    def unpacking(self, node: ast.For) -> tuple[ast.expr, list[ast.stmt]]:
        """`for a, b in it` -> `for t in it: a, b = rt.unpack(t, 2)`, so that items that are proxies unpack."""
        target = node.target
        if not isinstance(target, (ast.Tuple, ast.List)) or any(isinstance(e, ast.Starred) for e in target.elts):
            return target, []
        item = self.fresh("item")
        unpack = _runtime("unpack", _name(item), ast.Constant(len(target.elts)), ast.Constant(node.lineno))
        return ast.Name(item, ast.Store()), [ast.copy_location(ast.Assign([target], unpack), node)]

    def visit_While(self, node: ast.While) -> ast.With:
        """`while c: A` -> a loop whose test must be a plain value (`while` on a proxy cannot be compiled)."""
        name = self.fresh("loop")
        test = _runtime("plain", self.truth(self.visit(node.test)), ast.Constant("while"), ast.Constant(node.lineno))
        loop = ast.While(test, self.loop_body(name, node.body), self.block(node.orelse))
        return self.within(node, _runtime("loop", ast.Constant(None), ast.Constant(node.lineno)), name, [loop])

    def loop_body(self, name: str, body: list[ast.stmt]) -> list[ast.stmt]:
        self.loops.append(name)
        try:
            return self.block(body)
        finally:
            self.loops.pop()

    def visit_Break(self, node: ast.stmt) -> ast.If:
        """`break` -> `if l.break_(): break` (a session loop records `iterator.exit()` instead)."""
        return self.jump(node, "break_")

    def visit_Continue(self, node: ast.stmt) -> ast.If:
        return self.jump(node, "continue_")

    def jump(self, node: ast.stmt, method: str) -> ast.If:
        if not self.loops:
            word = method.rstrip("_")
            raise Unsupported(node.lineno, f"it has a `{word}` out of the block: "
                                            f"set a flag inside the block and {word} after it")
        test = _call(_attr(_name(self.loops[-1]), method), [ast.Constant(node.lineno)])
        return ast.copy_location(ast.If(test, [node], []), node)

    def visit_IfExp(self, node: ast.IfExp) -> ast.IfExp:
        node = self.generic_visit(node)
        node.test = _runtime("plain", self.truth(node.test), ast.Constant("ifexp"), ast.Constant(node.lineno))
        return node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        """`print(...)` -> `rt.print(print, ...)`: a log node when it prints proxies or runs conditionally;
        `x.save()` -> `rt.save(x)`: as nnsight 0.5, any value has a `.save()` (a list, a shape)."""
        node = self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            node.args = [node.func, *node.args]
            node.func = _attr(_name(RUNTIME), "print")
        elif _bare_save(node):
            return ast.copy_location(_runtime("save", node.func.value), node)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.expr:
        """`f"a {x!r:>4}"` -> `rt.fstring("a ", (x, 114, ">4"))`: a string, or a proxy of one."""
        if not any(isinstance(v, ast.FormattedValue) for v in node.values):
            return node
        parts: list[ast.expr] = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                spec = self.visit(value.format_spec) if value.format_spec is not None else ast.Constant("")
                parts.append(ast.Tuple([self.visit(value.value), ast.Constant(value.conversion), spec], ast.Load()))
            else:
                parts.append(value)
        return ast.copy_location(_runtime("fstring", *parts), node)

    def truth(self, test: ast.expr) -> ast.expr:
        """`not`, `and`, `or` of a condition as Runtime calls, so that they work on proxies."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return ast.copy_location(_runtime("not_", self.truth(test.operand)), test)
        if isinstance(test, ast.BoolOp):
            method = "and_" if isinstance(test.op, ast.And) else "or_"
            result = self.truth(test.values[0])
            for value in test.values[1:]:
                later = ast.Lambda(ast.arguments([], [], None, [], [], None, []), self.truth(value))
                result = ast.copy_location(_runtime(method, result, later), test)
            return result
        return test

    def within(self, node: ast.stmt, call: ast.Call, name: str, body: list[ast.stmt]) -> ast.With:
        """`with <call> as <name>: body`, at node's location."""
        item = ast.withitem(call, ast.Name(name, ast.Store()))
        return ast.copy_location(ast.With([item], body, None), node)
