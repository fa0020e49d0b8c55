"""Envoy: mirrors one module of the model; its .input/.output are proxies inside a trace."""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Iterator

import torch

from ..tracing.errors import TraceError
from ..tracing.local import current
from ..tracing.proxy import Proxy
from .eproperty import eproperty, open_trace, scanned
from .source import source_envoy
from .trace import Steps

__all__ = ["Envoy", "envoy_class", "eproperty"]  # eproperty: where nnsight also has it


def _is_tensor_of(module: torch.nn.Module, name: str) -> bool:
    """Whether name is one of the module's own parameters or buffers."""
    return name in module._parameters or name in module._buffers


def _assigned_back(value: Proxy) -> bool:
    """Whether value is a parameter, or the result of an operation on one (what `+=` assigns back)."""
    node = value.node
    return node.op == "parameter" or bool(node.args) and getattr(node.args[0], "op", None) == "parameter"


def envoy_class(envoys: Any, module: torch.nn.Module, path: str) -> type[Envoy]:
    """nnsight's `envoys=`: one Envoy class for every module, or a dict whose keys are module types (matched
    along the module's MRO, first) or dotted path suffixes ("self_attn", "h.0.attn", ".layer1"); else Envoy."""
    if envoys is None:
        return Envoy
    if isinstance(envoys, type):
        return envoys
    found = next((envoys[kind] for kind in type(module).__mro__ if kind in envoys), None)
    if found is not None:
        return found
    parts = path.split(".")
    keys = ((key.lstrip(".").split("."), cls) for key, cls in envoys.items() if isinstance(key, str) and key.strip("."))
    return next((cls for key, cls in keys if parts[-len(key):] == key), Envoy)


class Envoy:
    """A module's stand-in: children by attribute or index, values through .input/.output."""

    def __init__(self, module: torch.nn.Module, path: str = "", envoys: Any = None) -> None:
        self._module = module
        self._path = path
        self._classes = envoys  # nnsight's `envoys=`: which Envoy class wraps each module below
        self._children = {name: self._child(child, f"{path}.{name}" if path else name)
                          for name, child in module.named_children()}
        self._ordered = list(self._children.values())  # for indexing, e.g. layers[-1]
        self._aliases: dict[str, str] = {}  # alias -> dotted path below this envoy (see `_add_aliases`)
        clashes = [name for name in self._children if hasattr(type(self), name)]
        if clashes:
            self._preserve(clashes)

    def _preserve(self, names: list[str]) -> None:
        """Children named like an envoy attribute (BERT's `output` module): as in nnsight, the name gives
        the child's envoy and `nns_<name>` the attribute, for this envoy only (with a warning)."""
        cls = type(self)
        overrides: dict[str, Any] = {}
        for name in names:
            warnings.warn(f"Module `{self.path}` has a child named `{name}`, which is also an nnglass attribute: "
                          f"`.{name}` is the child here, and `.nns_{name}` the attribute.", stacklevel=3)
            overrides[name] = property(lambda envoy, name=name: envoy._children[name])
            overrides[f"nns_{name}"] = inspect.getattr_static(cls, name)
        self.__class__ = type(f"{cls.__name__}.Preserved", (cls,), overrides)

    # -- the module tree --------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        if "_module" not in state:  # not initialised yet (copy, unpickling)
            raise AttributeError(name)
        if name in state["_children"]:
            return state["_children"][name]
        if name in state["_aliases"]:
            return self.get(state["_aliases"][name])
        module = state["_module"]
        if name in module._modules:
            return self._adopt(name)
        tracer = current()
        if tracer is not None and hasattr(tracer, "parameter") and _is_tensor_of(module, name):
            return tracer.parameter(self._path, name)
        return getattr(module, name)

    def _child(self, module: torch.nn.Module, path: str) -> Envoy:
        """The envoy of a module below this one, of the class `envoys=` gives it (and this one's root)."""
        child = envoy_class(self._classes, module, path)(module, path, self._classes)
        root = self.__dict__.get("_root")
        for envoy in child._envoys():  # its own children were made before it knew its root
            envoy.__dict__["_root"] = root
        return child

    def _trace(self) -> Any:
        """The trace being recorded, which must run this envoy's model."""
        return self._own(open_trace())

    def _own(self, recorder: Any) -> Any:
        """recorder, if it records this envoy's model (a trace or session reads and calls its own model only)."""
        root, model = self.__dict__.get("_root"), getattr(recorder, "model", None)
        if root is not None and model is not None and getattr(model, "_model", None) is not root._model:
            raise TraceError(f"'{self.path}' belongs to another model than the one this {recorder.kind} runs: "
                             f"it reads and calls the modules of its own model (trace the other one separately).")
        return recorder

    def _adopt(self, name: str) -> Envoy:
        """The envoy of a child module attached after the model was wrapped (`envoy._module.add_module(...)`)."""
        path = f"{self._path}.{name}" if self._path else name
        child = self._children[name] = self._child(self._module._modules[name], path)
        self._ordered.append(child)
        return child

    def __setattr__(self, name: str, value: Any) -> None:
        module = self.__dict__.get("_module")
        if module is not None and isinstance(value, Proxy) and _is_tensor_of(module, name):
            if not _assigned_back(value):
                raise TraceError(f"Edit parameters in place (`.{name}[:] = value`); a parameter cannot be replaced.")
            return  # `model.layer.weight *= 2`: the in-place edit is recorded; Python's assignment after it is not one
        if module is not None and isinstance(value, torch.nn.Module) and not name.startswith("_"):
            module.add_module(name, value)  # `envoy.sae = SAE()`: attached to the module, with its own envoy
            if name in self._children:
                self._ordered.remove(self._children.pop(name))
            return
        object.__setattr__(self, name, value)

    def to(self, *args: Any, **kwargs: Any) -> Envoy:
        """Move the module (`NNsight(net).to("cpu")`); the envoy itself, as in nnsight."""
        self._module.to(*args, **kwargs)
        return self

    def cpu(self) -> Envoy:
        return self.to("cpu")

    def cuda(self, device: Any = None) -> Envoy:
        return self.to("cuda" if device is None else device)

    def get(self, path: str) -> Envoy:
        """The envoy at a dotted path below this one (`"transformer.h.0"`); aliases work too."""
        envoy = self
        for name in path.split(".") if path else ():
            if name in envoy._children:
                envoy = envoy._children[name]
            elif name in envoy._aliases:
                envoy = envoy.get(envoy._aliases[name])
            else:
                raise AttributeError(f"Module '{envoy._path or '<root>'}' has no submodule '{name}' "
                                     f"(looking up '{path}').")
        return envoy

    def _add_aliases(self, rename: dict[str, str | list[str]]) -> None:
        """Add aliases (original -> alias name or names); aliased envoys keep their original `_path`."""
        # A plain name ("attn": "self_attn") aliases every submodule of that name, at any depth; a path
        # ("transformer.h", ".h", "h.0") every module whose path ends with it, mounted on the envoy the path
        # starts from (as nnsight: {"h.0": "first"} gives model.transformer.first).
        for key, aliases in rename.items():
            key = key.lstrip(".")
            if "." in key:
                owners = [envoy for envoy in self._envoys() if envoy._reaches(key)]
            else:
                owners = [envoy for envoy in self._envoys() if key in envoy._children]
            if not owners:
                raise AttributeError(f"rename: no module path ends with '{key}'.")
            for alias in [aliases] if isinstance(aliases, str) else aliases:
                for owner in owners:
                    owner._aliases[alias.lstrip(".")] = key

    def _reaches(self, path: str) -> bool:
        """Whether a module sits at path below this envoy (original names only)."""
        envoy = self
        for name in path.split("."):
            envoy = envoy._children.get(name)
            if envoy is None:
                return False
        return True

    def __getitem__(self, key: int | slice | str) -> Any:
        """A child by position or name; a slice gives a list of children (`layers[:2]`), as nnsight."""
        if isinstance(key, (int, slice)):
            return self._ordered[key]
        return self._children[key]

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Envoy]:
        return iter(self._children.values())

    def __repr__(self) -> str:
        return repr(self._module)

    def _envoys(self) -> list[Envoy]:
        """This envoy and every envoy below it."""
        found = [self]
        for child in self._children.values():
            found.extend(child._envoys())
        return found

    @property
    def path(self) -> str:
        """The module's path as nnsight names it: `model`, `model.transformer.h.0`."""
        return f"model.{self._path}" if self._path else "model"

    def modules(self, include_fn: Callable[[Envoy], bool] | None = None, names: bool = False) -> list:
        """The envoys of this module and every one below it, children first (as nnsight lists them);
        with names, (path, envoy) pairs."""
        found = [m for child in self._children.values() for m in child.modules(include_fn, names)]
        if include_fn is None or include_fn(self):
            found.append((self.path, self) if names else self)
        return found

    def named_modules(self, include_fn: Callable[[Envoy], bool] | None = None) -> list[tuple[str, Envoy]]:
        """(path, envoy) for this module and every one below it."""
        return self.modules(include_fn, names=True)

    def __call__(self, *args: Any, hook: bool = False, **kwargs: Any) -> Any:
        """Run the module; in a trace, with `hook=True` the call is one of its calls (its `.output` is this call's)."""
        tracer = current()
        if tracer is None:
            return self._module(*args, **kwargs)
        return self._own(tracer).proxy("call_module", self._path, args, {**kwargs, "hook": hook} if hook else kwargs)

    # -- values in a trace --------------------------------------------------------------------------
    def _value(self, kind: str) -> Any:
        """A module value: in a trace, its latest proxy; outside, as the model's last scan saw it."""
        if not hasattr(current(), "event"):
            return scanned(self, kind)
        return self._trace().event(self._path, kind)

    @property
    def output(self) -> Proxy:
        """The module's output (at the addressed call)."""
        return self._value("output")

    @output.setter
    def output(self, value: Any) -> None:
        self._trace().set_event(self._path, "output", value)

    @property
    def inputs(self) -> Proxy:
        """The module's inputs as (args, kwargs)."""
        return self._value("inputs")

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._trace().set_event(self._path, "inputs", value)

    @property
    def input(self) -> Proxy:
        """The module's first positional (or else first keyword) input."""
        return self._value("input")

    @input.setter
    def input(self, value: Any) -> None:
        self._trace().set_event(self._path, "input", value)

    def skip(self, value: Any) -> None:
        """The module does not run (at the addressed call); value stands for its output."""
        self._trace().skip(self._path, value)

    @property
    def source(self) -> Any:
        """The calls inside this module's forward as points with .input/.output (see source.py)."""
        return source_envoy(self, Envoy)

    def next(self, step: int = 1) -> Envoy:
        """Address the module's following call (generation steps, repeated use)."""
        self._trace().next_call(self._path, step)
        return self

    @property
    def iter(self) -> Any:
        """`for step in envoy.iter[0:2]:` the body addresses this module's call at each step."""
        return Steps(self._trace(), self._path)

    def all(self) -> Envoy:
        """Address every call of the module and its children: what depends on them runs once per call.

        As a context manager (`with model.all():`) it applies to every invoke opened inside and ends with it.
        """
        self._trace().all_calls(self._path)
        return self

    def __enter__(self) -> Envoy:
        tracer = self._trace()
        tracer.calls.pop((self._path, tracer.current_invoke), None)  # the scope, not `.all()` itself, says ALL
        self._scope = tracer.all_scope(self._path)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._scope.__exit__(*exc)
