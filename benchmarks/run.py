"""Run the registered benchmark scenarios, print their tables and write benchmarks/RESULTS.md."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

import harness
import peer
from plot import plot_overhead
from targets import targets_table

# Modules whose import registers scenarios (with @harness.scenario); add new ones here.
SCENARIO_MODULES = ("scenarios_core", "scenarios_lm", "scenarios_remote")
RESULTS = Path(__file__).with_name("RESULTS.md")
PLOT = "overhead.png"  # written beside the markdown file
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
                        help=f"markdown file to write (default: {RESULTS.name} on full runs, none with --quick/--only); "
                             f"{PLOT} is written beside it")
    parser.add_argument("--peer", metavar="PYTHON",
                        help="interpreter of a virtualenv with the peer library (nnsight, `make bench-peer`): the "
                             "SmolLM2 scenarios run there too, in a subprocess, and gain its columns")
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
        "- SmolLM2 scenarios (LM1..LM6): fewer repetitions, as each table's notes say; with `--peer`, the peer "
        "library's columns come from a subprocess running its own interpreter (`make bench-peer`)",
        f"- command: `python benchmarks/run.py{''.join(' ' + a for a in argv)}`, {seconds:.0f} s in all", "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; print tables; write the markdown file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    peer.PEER = peer.Peer(args.peer) if args.peer else None
    try:
        return _run(args, argv)
    finally:
        peer.PEER = None


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    """The body of main: scenarios, tables, targets, plot, markdown."""
    settings = harness.QUICK if args.quick else harness.FULL
    info = harness.machine()
    print(f"{info['cpu']}; {info['load']}\ntorch {info['torch']}, autograd off; "
          f"{settings.reps} repetitions after {settings.warmup} warm-up rounds\n")
    started = time.perf_counter()
    sections, everything = [], []
    for name in args.only or list(harness.SCENARIOS):
        began = time.perf_counter()
        tables = harness.SCENARIOS[name](settings)
        print(f"## {name} ({time.perf_counter() - began:.1f} s)\n")
        for table in tables:
            print(table.text())
            sections.append(table.markdown())
        everything += tables
    targets = targets_table(everything)
    print(targets.text())
    out = args.out or (None if args.quick or args.only else RESULTS)
    if out is not None:
        plot = out.parent / PLOT
        summary = targets.markdown()
        if plot_overhead(everything, plot):
            summary += f"\n![overhead per SmolLM2 scenario]({plot.name})\n"
            print(f"wrote {plot}")
        out.write_text(header(info, settings, time.perf_counter() - started, argv) + "\n" + summary + "\n"
                       + "\n".join(sections))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
