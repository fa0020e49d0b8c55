"""NNsight: wraps any torch module so that its internals can be traced and edited."""
from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..intervention.backend import RUNS, Backend
from ..intervention.envoy import Envoy
from ..intervention.fake import ScanCache, record_forward
from ..intervention.session import Editor, Session
from ..intervention.trace import Trace
from ..tracing.walk import leaves

__all__ = ["NNsight", "batch_slices", "BACKENDS", "library_options"]

# Backends by name besides the local one; `nnglass.remote` adds "remote" when imported.
BACKENDS: dict[str, Any] = {}


def backend_for(remote: Any, blocking: bool = True, at_once: bool = False) -> Backend | None:
    """The backend `remote=` asks for: None (here) or a registered one ("remote" for True).

    `blocking=False` (a server run that returns at once, with a job handle) needs `remote=True`, and a
    block (`at_once`: the call itself returns the output, as `trace=False` does, so it must wait).
    """
    if not blocking and (remote is not True or at_once):
        raise TypeError("blocking=False sends the run to a server and returns at once: give remote=True too, "
                        "inside a with-block (then tracer.job.result() waits for the values).")
    if not remote:
        return None
    name = "remote" if remote is True else remote
    if name not in BACKENDS:
        raise ValueError(f"Unknown remote={remote!r}: use True (a server) or one of {sorted(BACKENDS)}.")
    return BACKENDS[name]() if blocking else BACKENDS[name](blocking=False)


class NNsight(Envoy):
    """The root envoy of a model, with `trace` and `scan`; `rename={original: alias}` adds module aliases,
    `envoys=` says which Envoy subclass wraps which modules (nnsight's extension API, see eproperty)."""

    envoys: Any = None  # a subclass's default `envoys=` (see Envoy: which Envoy class wraps each module)

    def __init__(self, module: torch.nn.Module, rename: dict[str, str | list[str]] | None = None,
                 envoys: Any = ...) -> None:
        self.__dict__["_root"] = self  # every envoy below knows the model it belongs to
        super().__init__(module, "", type(self).envoys if envoys is ... else envoys)
        self._model = module
        self._modules_by_path = dict(module.named_modules())
        self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._scans = ScanCache()
        self._scanned: dict = {}  # the last `model.scan` block's records: shapes readable after the block
        self._edits: list[Any] = []  # graphs that every trace of this model applies first
        self._remote_name: str | None = None  # what a server hosts this model as
        self._add_aliases(rename or {})  # e.g. {"transformer.h": "layers"}: model.layers is model.transformer.h

    def trace(self, *inputs: Any, trace: bool = True, scan: bool = False, validate: bool = False,
              invoker_args: dict | None = None, remote: bool = False, blocking: bool = True, **kwargs: Any) -> Any:
        """`with model.trace(input) as tracer:` records interventions and runs them on exit.

        With `remote=True, blocking=False` the exit only sends the run to the server: `tracer.job` is its handle.
        """
        invoker_args = library_options(kwargs, invoker_args)
        backend = backend_for(remote, blocking, at_once=not trace)
        if not trace:
            with Trace(self, inputs, kwargs, invoker_args=invoker_args, backend=backend):
                output = self.output.save()
            return output.value
        return Trace(self, inputs, kwargs, scan=scan, validate=validate, invoker_args=invoker_args,
                     backend=backend)

    def scan(self, *inputs: Any, **kwargs: Any) -> Trace:
        """`with model.scan(input):` gives shapes and dtypes without running the model."""
        return Trace(self, inputs, kwargs, scan=True, run=False)

    def session(self, remote: bool = False, scan: bool = False, validate: bool = False, blocking: bool = True,
                **options: Any) -> Session:
        """`with model.session() as session:` runs the traces inside in order, at exit; scan/validate apply to each.

        With `remote=True, blocking=False` the exit only sends it to the server: `session.job` is its handle.
        """
        library_options(options)
        return Session(self, backend_for(remote, blocking), scan, validate)

    def edit(self, inplace: bool = False) -> Editor:
        """`with model.edit() as edited:` makes interventions that apply to every later trace."""
        return Editor(self, inplace)

    def clear_edits(self) -> None:
        """Remove all edits made with `edit(inplace=True)`."""
        self._edits = []

    # -- what subclasses adapt --------------------------------------------------------------------------
    def _prepare_inputs(self, *inputs: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        """Model args and kwargs for one invoke, and its batch size."""
        first = next((v for v in (*inputs, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        size = first.shape[0] if first is not None and first.ndim else 1
        return inputs, kwargs, size

    def _invoker_inputs(self, prepared: tuple[tuple, dict, int]) -> tuple[tuple, dict]:
        """What `invoker.inputs` shows of one invoke's prepared inputs: its (args, kwargs)."""
        return prepared[0], prepared[1]

    def _batch(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict, list[tuple[int, int]], int]:
        """Concatenate invokes along the batch dimension; also give each invoke's (start, size)."""
        slices, total = batch_slices([size for _, _, size in prepared])
        if len(prepared) == 1:
            args, kwargs, _ = prepared[0]
            return args, kwargs, slices, total
        if len({len(p[0]) for p in prepared}) > 1:
            raise TypeError("Every invoke must give the model the same number of positional inputs.")
        args = tuple(concat([p[0][i] for p in prepared], f"input {i}") for i in range(len(prepared[0][0])))
        names = {name: None for p in prepared for name in p[1]}
        kwargs = {name: concat([p[1].get(name, _MISSING) for p in prepared], f"keyword '{name}'") for name in names}
        return args, kwargs, slices, total

    def _batch_factors(self, method: str, call_kwargs: dict) -> frozenset[int]:
        """How many copies of each row a run makes: one (a forward pass makes none)."""
        return frozenset({1})

    def _execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model."""
        return self._model(*args, **kwargs)

    def _scan_records(self, args: tuple, kwargs: dict, needed: Any = None, method: str = "forward",
                      call_kwargs: dict | None = None) -> dict:
        """Records of the modules' inputs and outputs (up to those needed) in a run of method (e.g. every
        step of `generate`), cached per input signature."""
        call_kwargs = call_kwargs or {}
        run, kwargs = getattr(self, RUNS[method]), {**kwargs, **call_kwargs}
        key = (len(self._modules_by_path), method, _signature((args, kwargs)))  # `.source` points add modules
        return self._scans.get(key, lambda wanted: record_forward(
            self._modules_by_path, run, args, kwargs, self._fake_mode, wanted), needed)


def library_options(kwargs: dict, invoker_args: dict | None = None) -> dict | None:
    """Take the library's own 0.4 keywords out of kwargs; return the invoker_args (or 0.4.11's `invoker_kwargs`).

    `debug` is accepted with no effect (errors always name the user's line); `blocking` is a keyword of
    the run itself (never passed to the model).
    """
    alias = kwargs.pop("invoker_kwargs", None)
    if alias is not None and invoker_args is not None:
        raise TypeError("Give either invoker_args or invoker_kwargs (its nnsight 0.4.11 name), not both.")
    kwargs.pop("debug", None)
    return invoker_args if alias is None else alias


def batch_slices(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(start, size) of each invoke in the concatenated batch, and the total batch size."""
    slices, start = [], 0
    for size in sizes:
        slices.append((start, size))
        start += size
    return slices, start


_MISSING = object()


def concat(values: list[Any], name: str) -> Any:
    """One input of every invoke as one batch: tensors concatenated, other values equal in all invokes."""
    if any(v is _MISSING for v in values):
        raise TypeError(f"The {name} is given in some invokes but not in others: give it in every invoke "
                        f"(or in none), since all invokes run as one batch.")
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.cat(values)
    if any(isinstance(v, torch.Tensor) for v in values) or any(not _same(v, values[0]) for v in values):
        raise TypeError(f"The invokes give different values for the {name}; all invokes run as one "
                        f"batch, so non-tensor inputs must be equal (run them in separate traces).")
    return values[0]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _signature(value: Any) -> Any:
    return tuple((tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else repr(v)
                 for v in leaves(value))
