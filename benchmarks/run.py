"""Run the registered benchmark scenarios, print their tables and write benchmarks/RESULTS.md."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

import harness

# Modules whose import registers scenarios (with @harness.scenario); add new ones here.
SCENARIO_MODULES = ("scenarios_core",)
RESULTS = Path(__file__).with_name("RESULTS.md")
for _module in SCENARIO_MODULES:
    importlib.import_module(_module)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke check: {harness.QUICK.reps} repetitions, {harness.QUICK.traces} traces")
    parser.add_argument("--only", action="append", choices=sorted(harness.SCENARIOS), metavar="NAME",
                        help="run only this scenario (repeatable): " + ", ".join(harness.SCENARIOS))
    parser.add_argument("--out", type=Path,
                        help=f"markdown file to write (default: {RESULTS.name} on full runs, none with --quick/--only)")
    return parser.parse_args(argv)


def header(info: dict[str, str], settings: harness.Settings, seconds: float, argv: list[str]) -> str:
    """The markdown header: when, where, with what, and how the numbers were taken."""
    return "\n".join([
        "# nnglass benchmarks", "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}; {info['load']}",
        f"- torch {info['torch']}, autograd off (`torch.set_grad_enabled(False)`); python {info['python']}",
        "- method: the variants of a scenario run interleaved in one process, in a fresh random order every "
        f"repetition: {settings.warmup} warm-up rounds, then {settings.reps} timed repetitions with "
        "`time.perf_counter_ns`. overhead = median of the per-repetition differences against the baseline "
        "variant (p25..p75: their spread); ratio = median / baseline median; GC µs/call = garbage-collector "
        "pauses inside the variant's timed calls (`gc.callbacks`), per call; calls = Python and C function calls "
        "in one call of the variant (`sys.setprofile`)",
        f"- command: `python benchmarks/run.py{''.join(' ' + a for a in argv)}`, {seconds:.0f} s in all", "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; print tables; write the markdown file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    settings = harness.QUICK if args.quick else harness.FULL
    info = harness.machine()
    print(f"{info['cpu']}; {info['load']}\ntorch {info['torch']}, autograd off; "
          f"{settings.reps} repetitions after {settings.warmup} warm-up rounds\n")
    started = time.perf_counter()
    sections = []
    for name in args.only or list(harness.SCENARIOS):
        began = time.perf_counter()
        tables = harness.SCENARIOS[name](settings)
        print(f"## {name} ({time.perf_counter() - began:.1f} s)\n")
        for table in tables:
            print(table.text())
            sections.append(table.markdown())
    out = args.out or (None if args.quick or args.only else RESULTS)
    if out is not None:
        out.write_text(header(info, settings, time.perf_counter() - started, argv) + "\n" + "\n".join(sections))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
