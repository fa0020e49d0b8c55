"""Benchmark harness: settings, interleaved timing, summaries of samples and markdown tables.

Imports torch only, never nnglass: the peer library's worker (peer.py) measures with it too.
"""
from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Settings", "FULL", "QUICK", "setup", "measure", "summary", "times", "overheads", "Table"]

Variant = Callable[[], Any]  # its result is ignored
Samples = dict[str, list[int]]
Figure = dict[str, float]  # {"value": median, "min": ..., "max": ...}


@dataclass(frozen=True)
class Settings:
    """Repetitions and warm-up rounds of cheap and of SmolLM2 scenarios, and traces of the memory scenario."""

    reps: int = 300
    warmup: int = 10
    lm_reps: int = 30
    lm_warmup: int = 2
    traces: int = 1000


FULL = Settings()
QUICK = Settings(reps=3, warmup=1, lm_reps=2, lm_warmup=1, traces=50)


def setup() -> None:
    """One torch thread, autograd off, fixed seeds: the same conditions for every library."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)


def measure(variants: dict[str, Variant], reps: int, warmup: int) -> Samples:
    """Each variant once per repetition in a fresh random order, after warm-up rounds; ns per call."""
    names = list(variants)
    samples: Samples = {name: [] for name in names}
    order = random.Random(0)
    gc.collect()
    for rep in range(-warmup, reps):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter_ns()
            variants[name]()
            elapsed = time.perf_counter_ns() - start
            if rep >= 0:
                samples[name].append(elapsed)
    return samples


def summary(values: list[float], scale: float = 1e-3) -> Figure:
    """Median, min and max of values, times scale (ns to µs by default)."""
    return {"value": statistics.median(values) * scale, "min": min(values) * scale, "max": max(values) * scale}


def times(samples: Samples) -> dict[str, Figure]:
    """`NAME µs` for every variant."""
    return {f"{name} µs": summary(values) for name, values in samples.items()}


def overheads(samples: Samples, pairs: dict[str, str]) -> dict[str, Figure]:
    """`overhead: VARIANT µs`: per-repetition differences against its baseline, both timed in the same round."""
    return {f"overhead: {variant} µs": summary([a - b for a, b in zip(samples[variant], samples[base])])
            for variant, base in pairs.items()}


@dataclass
class Table:
    """One result table: rows of cells; notes go under it."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        """Append a row with one cell per column."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title!r} has {len(self.columns)} columns, got {len(cells)} cells")
        self.rows.append(list(cells))

    def markdown(self) -> str:
        """The table as a markdown section."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"- {note}" for note in self.notes]) + "\n"


def cell(value: Any) -> str:
    """A cell: — for missing, thousands separators for large floats, two decimals for small ones."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)
