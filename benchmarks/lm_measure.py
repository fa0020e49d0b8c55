"""Measuring one SmolLM2 scenario with one library: each variant checked once, then timed interleaved.

Imports torch, harness.py and the scenario specs, never nnglass: the peer library's worker (peer.py) measures
with it too.
"""
from __future__ import annotations

import functools
from time import perf_counter_ns, process_time_ns
from typing import Any, Callable

import torch
from harness import Settings, count_calls, measure
from lm_specs import SPECS

OUTSIDE = "outside the forward"  # a phase every variant reports: its time less the model's forward calls
CPU = "CPU time"  # a phase every variant reports: CPU time of the process (not advanced while others run)
PHASES = (CPU, OUTSIDE)


class ForwardClock:
    """Time spent inside the transformers model's forward calls, from a wrapper around its `forward`.

    A variant's time less this is the tokenizer, the library's setup and teardown and the generation loop:
    its difference between a trace and its plain baseline is the overhead outside the forward pass, without
    the forward pass's much larger run-to-run noise. Work that hooks do during the forward is not in it.
    A wrapper with try/finally rather than hooks: an early stop unwinds the forward with a BaseException,
    which skips even `always_call` forward hooks.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.inside = 0
        self.had: Any = None

    def __enter__(self) -> ForwardClock:
        module = self.module
        self.had = module.__dict__.get("forward")  # nnsight puts its own wrapper there
        inner = module.forward

        @functools.wraps(inner)  # inspect.signature follows __wrapped__: generate() reads forward's parameters
        def forward(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.inside += perf_counter_ns() - start

        module.forward = forward
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.had is None:
            del self.module.forward
        else:
            self.module.forward = self.had

    def timing(self, fn: Callable[[], Any]) -> Callable[[], dict[str, int]]:
        """fn as a timed variant that reports, as phases, its time outside the forward calls and its CPU time."""
        def call() -> dict[str, int]:
            self.inside = 0
            cpu = process_time_ns()
            start = perf_counter_ns()
            fn()
            end = perf_counter_ns()
            return {OUTSIDE: end - start - self.inside, CPU: process_time_ns() - cpu}
        return call


def measure_case(name: str, lib: Any, model: Any, settings: Settings) -> dict[str, Any]:
    """Run each variant once (checked), time those that work interleaved, count their calls; JSON-ready."""
    spec = SPECS[name]
    result: dict[str, Any] = {"failed": {}, "samples": {}, "gc_ns": {}, "calls": {}}
    try:
        variants, checks = spec.build(lib, model)
    except Exception as exc:  # noqa: BLE001 - a library that cannot run a scenario gets "failed" in its column
        result["failed"] = dict.fromkeys(spec.variants, reason(exc))
        return result
    timed = _checked(spec.variants, variants, checks, result["failed"])
    if timed:
        with ForwardClock(model._module) as clock:
            measured = measure({variant: clock.timing(fn) for variant, fn in timed.items()}, settings)
        result["samples"], result["gc_ns"] = measured.samples, measured.gc_ns
        result["calls"] = {variant: count_calls(fn) for variant, fn in timed.items()}
    return result


def _checked(names: tuple[str, ...], variants: dict[str, Callable[[], Any]],
             checks: dict[str, Callable[[Any], None]], failed: dict[str, str]) -> dict[str, Callable[[], Any]]:
    """The variants that run and pass their check once; why the others failed goes into `failed`."""
    timed: dict[str, Callable[[], Any]] = {}
    for variant in names:
        fn = variants[variant]
        try:
            saved = fn()
            if variant in checks:
                checks[variant](saved)
        except Exception as exc:  # noqa: BLE001
            failed[variant] = reason(exc)
        else:
            timed[variant] = fn
    return timed


def reason(exc: BaseException) -> str:
    """A one-line cause for a results table."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def quiet_transformers() -> None:
    """No progress bars or generation-config warnings in the benchmark output."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
