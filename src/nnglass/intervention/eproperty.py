"""eproperty: a module value of an envoy, read and written like `.output` (nnsight's extension API).

    class HeadsEnvoy(Envoy):
        @eproperty(key="output")
        @requires_output
        def heads(self): ...                  # the stub's body never runs

        @heads.preprocess                     # what the user sees: [batch, heads, tokens, head width]
        def heads(self, value):
            return value.unflatten(-1, (4, -1)).transpose(1, 2)

        @heads.transform                      # the edited view, back into the model's shape
        @staticmethod
        def heads(value):
            return value.transpose(1, 2).flatten(-2)

`requires_output` / `requires_input` (nnglass.intervention.hooks) say which value of the module it views;
`postprocess` shapes what an assignment (`envoy.heads = v`) swaps in. Inside a trace every step records
graph nodes: the view is an operation on the module's output, the transform a swap recorded once the user's
edits of the view are (at the next module value read, the end of the invoke, or the end of the block).
"""
from __future__ import annotations

from typing import Any, Callable

from ..tracing.errors import TraceError
from ..tracing.local import current

__all__ = ["eproperty", "open_trace", "scanned"]

_KEYS = {"output": "output", "input": "inputs", "inputs": "inputs"}  # nnsight's key -> the module value


class eproperty:  # noqa: N801  nnsight's name
    """A descriptor for Envoy subclasses: `key` ("output", "input"), with optional pre/postprocess and transform."""

    def __init__(self, key: str | None = None, description: str | None = None, iterate: bool = True) -> None:
        del description, iterate  # nnsight's repr label and step suffix: accepted, call indices do that here
        self.key = key
        self.stub: Callable[..., Any] | None = None
        self.pre: Callable[..., Any] | None = None
        self.post: Callable[..., Any] | None = None
        self.back: Any = None  # the transform (a function of the view, or of the envoy and the view)

    def __call__(self, stub: Callable[..., Any]) -> eproperty:
        self.stub = stub
        return self

    def preprocess(self, fn: Callable[[Any, Any], Any]) -> eproperty:
        self.pre = fn
        return self

    def postprocess(self, fn: Callable[[Any, Any], Any]) -> eproperty:
        self.post = fn
        return self

    def transform(self, fn: Any) -> eproperty:
        self.back = fn
        return self

    def kind(self) -> str:
        """The module value this views: as `requires_output`/`requires_input` mark the stub, else by key."""
        kind = getattr(self.stub, "nnglass_value", None) or _KEYS.get(self.key or "")
        if kind is None:
            name = getattr(self.stub, "__name__", "?")
            raise TraceError(f"eproperty '{name}' names no module value: decorate its stub with requires_output "
                             f"or requires_input (values provided from outside a module are not supported).")
        return kind

    def __get__(self, envoy: Any, owner: type | None = None) -> Any:
        if envoy is None:
            return self
        kind = self.kind()
        value = envoy._value(kind)  # outside a trace: as the last scan saw it
        view = self.pre(envoy, value) if self.pre is not None else value
        if self.back is not None:
            envoy._trace().defer_swap(envoy._path, kind, lambda: self._transformed(envoy, view))
        return view

    def __set__(self, envoy: Any, value: Any) -> None:
        tracer = envoy._trace()
        tracer.set_event(envoy._path, self.kind(), self.post(envoy, value) if self.post is not None else value)

    def _transformed(self, envoy: Any, view: Any) -> Any:
        """The transform of the (edited) view: a staticmethod takes the view, a method the envoy too."""
        if isinstance(self.back, staticmethod):
            return self.back.__func__(view)
        return self.back(envoy, view)


def scanned(envoy: Any, kind: str) -> Any:
    """Outside a trace: the module's value (fake: shapes and dtypes) at its first call in the model's last
    `model.scan` block, as nnsight keeps it; else the clear error of a value read outside a trace."""
    root = envoy.__dict__.get("_root") or envoy
    value = getattr(root, "_scanned", {}).get((envoy._path, "inputs" if kind == "input" else kind, 0), _NONE)
    if value is _NONE:
        open_trace()  # raises
    if kind == "input":
        args, kwargs = value
        return args[0] if args else next(iter(kwargs.values()))
    return value


_NONE = object()


def open_trace() -> Any:
    """The trace being recorded (where module values exist), else a clear error."""
    tracer = current()
    if tracer is None or not hasattr(tracer, "event"):
        raise TraceError("Module inputs and outputs exist only inside `with model.trace(...)`.")
    return tracer
