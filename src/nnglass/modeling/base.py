"""NNsight: wraps any torch module so that its internals can be traced and edited."""
from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..intervention.envoy import Envoy
from ..intervention.scan import record_forward
from ..intervention.session import Editor, Session
from ..intervention.tracer import Tracer
from ..tracing.node import map_nested


class NNsight(Envoy):
    """The root envoy of a model, with `trace` and `scan`; `rename={original: alias}` adds module aliases."""

    def __init__(self, module: torch.nn.Module, rename: dict[str, str | list[str]] | None = None) -> None:
        super().__init__(module, "")
        self._model = module
        self._modules_by_path = dict(module.named_modules())
        self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._scans: dict[Any, dict] = {}
        self._edits: list[Any] = []  # graphs that every trace of this model applies first
        self._remote_name: str | None = None  # what a server hosts this model as
        self._add_aliases(rename or {})  # e.g. {"transformer.h": "layers"}: model.layers is model.transformer.h

    def trace(self, *inputs: Any, trace: bool = True, scan: bool = False, validate: bool = False,
              invoker_args: dict | None = None, remote: bool = False, **kwargs: Any) -> Any:
        """`with model.trace(input) as tracer:` records interventions and runs them on exit."""
        if not trace:
            with Tracer(self, inputs, kwargs, invoker_args=invoker_args, remote=remote):
                output = self.output.save()
            return output.value
        return Tracer(self, inputs, kwargs, scan=scan, validate=validate, invoker_args=invoker_args,
                      remote=remote)

    def scan(self, *inputs: Any, **kwargs: Any) -> Tracer:
        """`with model.scan(input):` gives shapes and dtypes without running the model."""
        return Tracer(self, inputs, kwargs, scan=True, run=False)

    def session(self, remote: bool = False) -> Session:
        """`with model.session() as session:` runs the traces inside in order, at exit."""
        return Session(self, remote)

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

    def _batch(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict, list[tuple[int, int]], int]:
        """Concatenate invokes along the batch dimension; also give each invoke's (start, size)."""
        slices, total = batch_slices([size for _, _, size in prepared])
        if len(prepared) == 1:
            args, kwargs, _ = prepared[0]
            return args, kwargs, slices, total
        args = tuple(_concat([p[0][i] for p in prepared]) for i in range(len(prepared[0][0])))
        kwargs = {k: _concat([p[1][k] for p in prepared]) for k in prepared[0][1]}
        return args, kwargs, slices, total

    def _execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model."""
        return self._model(*args, **kwargs)

    def _scan_records(self, args: tuple, kwargs: dict) -> dict:
        """Fake-tensor records of every module's inputs and outputs, cached per input signature."""
        key = _signature((args, kwargs))
        records = self._scans.get(key)
        if records is None:
            records = self._scans[key] = record_forward(self, args, kwargs, self._fake_mode)
        return records


def batch_slices(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(start, size) of each invoke in the concatenated batch, and the total batch size."""
    slices, start = [], 0
    for size in sizes:
        slices.append((start, size))
        start += size
    return slices, start


def _concat(values: list[Any]) -> Any:
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return values[0]


def _signature(value: Any) -> Any:
    leaves: list[Any] = []
    map_nested(value, lambda v: leaves.append(
        (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else repr(v)))
    return tuple(leaves)
