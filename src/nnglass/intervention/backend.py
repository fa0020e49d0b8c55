"""Backends: where a recorded experiment runs (here, or on a server), and the model side they need."""
from __future__ import annotations

from typing import Any, Protocol

import torch

from ..tracing.graph import Graph
from ..tracing.interpreter import Run, run_graph
from .interleaver import Batch, Interleaver

__all__ = ["Backend", "LocalBackend", "Model", "run_trace", "run_experiment", "RUNS"]

# What a trace runs, by the name graphs (and the wire) use -> the model's method that does it.
RUNS = {"forward": "_execute", "generate": "_generate"}


class Model(Protocol):
    """What a backend needs of a wrapped model (NNsight and LanguageModel provide it)."""

    _modules_by_path: dict[str, torch.nn.Module]  # every module by dotted path ("" is the model)

    def _prepare_inputs(self, *inputs: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        """One invoke's model args, kwargs and batch size."""

    def _batch(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict, list[tuple[int, int]], int]:
        """All invokes as one batch: args, kwargs, each invoke's (start, size), the batch size."""

    def _batch_factors(self, method: str, call_kwargs: dict) -> frozenset[int]:
        """How many copies of each row the run may make (beams, return sequences)."""


class Backend(Protocol):
    """Runs a finished recorder's experiment and fills its results."""

    def run(self, recorder: Any) -> None:
        """Run the experiment the outermost recorder holds."""


def run_trace(model: Model, graph: Graph, run: Run, env: dict | None = None) -> dict:
    """Run one trace graph on its model: invokes batched into one forward; its env afterwards."""
    interleaver = Interleaver(graph, run, model._modules_by_path, env)
    interleaver.prepare()
    prepared = [model._prepare_inputs(*args, **kwargs) for args, kwargs in interleaver.invoke_inputs()]
    args, kwargs, slices, size = model._batch(prepared)
    method, call_kwargs = graph.meta.get("method", "forward"), graph.meta.get("call_kwargs", {})
    batch = Batch(slices, size, model._batch_factors(method, call_kwargs))
    interleaver.run_forward(batch, getattr(model, RUNS[method]), *args, **{**kwargs, **call_kwargs})
    return interleaver.env


def run_experiment(root: Graph, graphs: list[Graph], results: dict, models: Any, modules: dict | None = None) -> None:
    """Run a trace, or a session with its traces in order; `models(graph)` gives a trace graph's model."""
    run = Run(graphs, results, modules=modules)
    run.run_trace = lambda graph, env: run_trace(models(graph), graph, run, env)
    if root.kind == "trace":
        run.run_trace(root, {})
    else:
        run_graph(root, run)


class LocalBackend:
    """Runs the experiment here, on the wrapped models."""

    def run(self, recorder: Any) -> None:
        experiment = recorder.experiment
        models = lambda graph: experiment.owners[graph.id].model  # noqa: E731
        modules = getattr(getattr(recorder, "model", None), "_modules_by_path", None)
        run_experiment(recorder.graph, experiment.graphs, experiment.results, models, modules)
