"""Benchmark harness: interleaved timing, summary statistics, result tables and the scenario registry."""
from __future__ import annotations

import datetime
import gc
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# A variant is one way of doing the work; it may return {phase: ns} for parts it timed itself.
Variant = Callable[[], "dict[str, int] | None"]
Samples = dict[str, list[int]]


@dataclass(frozen=True)
class Settings:
    """How hard to measure: timed repetitions, warm-up rounds, and the loop length of memory checks."""

    reps: int = 500
    warmup: int = 20
    traces: int = 1000


FULL = Settings()
QUICK = Settings(reps=5, warmup=2, traces=50)


@dataclass
class Table:
    """One result table: rows are dicts keyed by column name; notes are printed under it."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        """Append a row; every key must be a column."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"not columns of {self.title!r}: {sorted(unknown)}")
        self.rows.append(row)

    def cells(self) -> list[list[str]]:
        """The rows as formatted strings, in column order."""
        return [[_format(row.get(column)) for column in self.columns] for row in self.rows]

    def markdown(self) -> str:
        """The table as a markdown section."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells()]
        return "\n".join(lines + [""] + [f"- {note}" for note in self.notes]) + "\n"

    def text(self) -> str:
        """The table as aligned plain text for the terminal."""
        body = [self.columns] + self.cells()
        widths = [max(len(row[i]) for row in body) for i in range(len(self.columns))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in body]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join([self.title, *lines, *(f"  * {note}" for note in self.notes)]) + "\n"


def _format(value: Any) -> str:
    """A cell: — for missing, thousands separators for large floats, two decimals for small ones."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


# -- the scenario registry ---------------------------------------------------------------------------
SCENARIOS: dict[str, Callable[[Settings], list[Table]]] = {}


def scenario(name: str) -> Callable[[Callable[[Settings], list[Table]]], Callable[[Settings], list[Table]]]:
    """Register a function `fn(settings) -> [Table, ...]` under name."""
    def register(fn: Callable[[Settings], list[Table]]) -> Callable[[Settings], list[Table]]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = fn
        return fn
    return register


# -- timing ------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Samples (ns per timed call, per variant and per phase a variant timed itself) and GC pauses."""

    samples: Samples
    gc_ns: dict[str, int]  # total garbage-collection pause inside each variant's timed calls


class GcClock:
    """Running total of the time spent in the garbage collector, while installed in gc.callbacks."""

    def __init__(self) -> None:
        self.total = 0
        self.started = 0

    def __call__(self, phase: str, info: dict) -> None:
        """gc.callbacks entry: note the start of a collection, add its duration at the stop."""
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            self.total += time.perf_counter_ns() - self.started

    def __enter__(self) -> GcClock:
        """Start counting."""
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop counting."""
        gc.callbacks.remove(self)


def measure(variants: dict[str, Variant], settings: Settings) -> Measurement:
    """Time each variant once per repetition, in a fresh random order each time, after warm-up rounds."""
    names = list(variants)
    result = Measurement({name: [] for name in names}, dict.fromkeys(names, 0))
    order = random.Random(0)
    gc.collect()
    with GcClock() as clock:
        for rep in range(-settings.warmup, settings.reps):
            order.shuffle(names)
            for name in names:
                paused = clock.total
                start = time.perf_counter_ns()
                phases = variants[name]()
                elapsed = time.perf_counter_ns() - start
                if rep >= 0:
                    result.samples[name].append(elapsed)
                    result.gc_ns[name] += clock.total - paused
                    for phase, ns in (phases or {}).items():
                        result.samples.setdefault(f"{name}: {phase}", []).append(ns)
    return result


def count_calls(fn: Callable[[], object]) -> int:
    """Python and C function calls made by one call of fn (a deterministic measure of work)."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def us(ns: float) -> float:
    """Nanoseconds to microseconds."""
    return ns / 1000


def median_us(values: list[int]) -> float:
    """Median of ns samples, in microseconds."""
    return us(statistics.median(values))


def paired(samples: Samples, variant: str, baseline: str) -> list[int]:
    """Per-repetition differences variant - baseline (ns): both ran in the same round."""
    return [a - b for a, b in zip(samples[variant], samples[baseline])]


def quartiles_us(values: list[int]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentile of ns values, in microseconds."""
    if len(values) < 2:
        return (us(values[0]),) * 3
    low, mid, high = statistics.quantiles(values, n=4, method="inclusive")
    return us(low), us(mid), us(high)


VARIANT_COLUMNS = ["variant", "median µs", "mean µs", "min µs", "max µs", "GC µs/call", "overhead µs",
                   "overhead p25..p75 µs", "ratio", "calls"]


def variant_rows(table: Table, measured: Measurement, baselines: dict[str, str], calls: dict[str, int],
                 **keys: Any) -> None:
    """Add one row per variant: time statistics, GC pauses, calls; overhead and ratio against its baseline."""
    samples = measured.samples
    for name, values in samples.items():
        gc_ns = measured.gc_ns.get(name)
        row = dict(keys, variant=name, calls=calls.get(name), **{
            "median µs": median_us(values), "mean µs": us(statistics.fmean(values)), "min µs": us(min(values)),
            "max µs": us(max(values)), "GC µs/call": None if gc_ns is None else us(gc_ns / len(values))})
        base = baselines.get(name)
        if base is not None:
            low, mid, high = quartiles_us(paired(samples, name, base))
            row.update({"overhead µs": mid, "overhead p25..p75 µs": f"{low:,.1f}..{high:,.1f}",
                        "ratio": f"{statistics.median(values) / statistics.median(samples[base]):.3f}"})
        table.add(**row)


# -- the machine ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """Date, machine and software versions for the results header."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()}, nproc {len(os.sched_getaffinity(0))}",
        "torch": f"{torch.__version__}, torch.set_num_threads({torch.get_num_threads()})",
        "python": platform.python_version(),
        "load": "load average %.2f, %.2f, %.2f (1, 5, 15 min) at the start" % os.getloadavg(),
    }
