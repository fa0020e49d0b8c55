"""Run the scenarios for nnglass (and the peer in its own interpreter), print and write benchmarks/RESULTS.md."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from nnglass.server.numerics import use_strict_gemm

use_strict_gemm()  # as `nnglass serve` runs: before torch's first matrix product (the peer's process inherits it)

import torch  # noqa: E402
from harness import FULL, QUICK, Settings, Table, setup
from peer import run_peer  # noqa: E402
from scenarios import SCENARIOS, TARGETS, Target  # noqa: E402

__all__ = ["main"]

RESULTS = Path(__file__).with_name("RESULTS.md")
PLOT = "overhead.png"  # written beside the markdown file
Results = dict[str, dict[str, Any]]  # scenario -> {"figures": ...} or {"error": ...}, plus versions for the peer


def parse(argv: list[str]) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help="run only this scenario (repeatable): " + ", ".join(SCENARIOS))
    parser.add_argument("--peer", metavar="PYTHON", help="interpreter with the peer library (`make bench-peer`)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few repetitions, no RESULTS.md")
    parser.add_argument("--out", type=Path, help="markdown file (default: RESULTS.md on full runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print their tables and the targets, write the markdown file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    setup()
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    ours, theirs = measure_all(args.only or list(SCENARIOS), settings, args.peer)
    tables = [scenario_table(name, ours[name], theirs.get(name)) for name in ours] + [targets_table(ours, theirs)]
    print("\n".join(table.markdown() for table in tables))
    out = args.out or (None if args.quick or args.only else RESULTS)
    if out is not None:
        head = header(settings, time.perf_counter() - started, argv)
        write(out, head, tables, plot(ours, theirs, out.parent / PLOT))
    return 0


def write(out: Path, head: str, tables: list[Table], plotted: bool) -> None:
    """The markdown file: the header, the targets (and the plot) first, then each scenario's table."""
    *scenarios, targets = tables
    picture = f"\n![overhead per scenario]({PLOT})\n" if plotted else ""
    out.write_text(head + "\n" + targets.markdown() + picture + "\n" + "\n".join(t.markdown() for t in scenarios))
    print(f"wrote {out}")


def measure_all(names: list[str], settings: Settings, peer: str | None) -> tuple[Results, Results]:
    """Each scenario for nnglass, then (right after it, in blocks) for the peer."""
    import nnglass
    from nnglass.models import smollm2_path
    path = str(smollm2_path()) if any(name.startswith("lm_") for name in names) else ""
    ours, theirs = {}, {}
    for name in names:
        began = time.perf_counter()
        ours[name] = {"figures": SCENARIOS[name][1](nnglass, settings, path)}
        if peer:
            theirs[name] = run_peer(peer, name, settings, path)
        print(f"{name}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return ours, theirs


def number(figure: Any) -> float | None:
    """A figure's value: the median of a summary, or the number itself."""
    value = figure.get("value") if isinstance(figure, dict) else figure
    return value if isinstance(value, (int, float)) else None


def spread(figure: Any) -> str | None:
    """`min..max` of a summary."""
    return f"{figure['min']:,.2f}..{figure['max']:,.2f}" if isinstance(figure, dict) else None


def peer_name(result: dict[str, Any] | None) -> str:
    """`nnsight 0.8.1`, as the peer reported itself."""
    return f"{result.get('library', 'peer')} {result.get('version', '')}".strip() if result else "peer"


def scenario_table(name: str, ours: dict[str, Any], theirs: dict[str, Any] | None) -> Table:
    """Figure by figure: nnglass, the peer (if run) and their ratio."""
    peer = peer_name(theirs)
    table = Table(f"{name}: {SCENARIOS[name][0]}", ["figure", "nnglass", "min..max", peer, f"{peer} min..max",
                                                     f"nnglass / {peer}"])
    mine, other = ours["figures"], (theirs or {}).get("figures", {})
    for figure, value in mine.items():
        a, b = number(value), number(other.get(figure))
        ratio = f"{a / b:.2f}" if a is not None and b else None
        table.add(figure, a if a is not None else value, spread(value), b, spread(other.get(figure)), ratio)
    table.notes.append(SCENARIOS[name][1].__doc__)
    if theirs and "error" in theirs:
        table.notes.append(f"{peer} failed: {theirs['error']}")
    return table


def targets_table(ours: Results, theirs: Results) -> Table:
    """Met / not met for each target of the issue whose scenario ran (reported, not asserted)."""
    table = Table("Targets", ["target", "figures", "status"])
    for target in TARGETS:
        if target.scenario in ours:
            table.add(target.text, *verdict(target, ours[target.scenario]["figures"], theirs.get(target.scenario)))
    table.notes.append("Reported, not asserted; timings on a shared, loaded machine are noisy.")
    return table


def verdict(target: Target, figures: dict[str, Any], theirs: dict[str, Any] | None) -> tuple[str, str]:
    """The figures behind a target and whether it is met."""
    value = number(figures.get(target.figure))
    if value is None:
        return "—", "not measured"
    if not target.peer_share:
        limit = number(figures.get(target.limit)) if isinstance(target.limit, str) else target.limit
        return f"{value:,.2f} (limit {limit})", "met" if limit is not None and value <= limit else "not met"
    peer = number((theirs or {}).get("figures", {}).get(target.figure))
    if peer is None:
        return f"nnglass {value:,.1f} µs", "not measured (run `make bench-peer`)"
    share = value / peer if peer > 0 else float("inf")
    return (f"nnglass {value:,.1f} µs vs {peer_name(theirs)} {peer:,.1f} µs: share {share:.2f}",
            "met" if share <= target.limit else "not met")


def plot(ours: Results, theirs: Results, path: Path) -> bool:
    """Every overhead as a bar, nnglass beside the peer, on a log scale; False without matplotlib."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [(n, f) for n, r in ours.items() for f in r["figures"] if f.startswith("overhead:") and f.endswith("µs")]
    if not labels:
        return False
    series = [("nnglass", ours)] + ([(peer_name(next(iter(theirs.values()))), theirs)] if theirs else [])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1))
    for shift, (label, results) in enumerate(series):
        values = [number(results.get(n, {}).get("figures", {}).get(f)) or 0.0 for n, f in labels]
        ax.barh([i + 0.4 * shift for i in range(len(labels))], [max(v, 0.01) for v in values], 0.4, label=label)
    ax.set_yticks([i + 0.2 for i in range(len(labels))], [f"{n}: {f[10:-3]}" for n, f in labels], fontsize=8)
    ax.set(xscale="log", xlabel="overhead over the plain equivalent, µs (median; ≤ 0 drawn at 0.01)")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def header(settings: Settings, seconds: float, argv: list[str]) -> str:
    """When, where, with what and how the numbers were taken."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# nnglass benchmarks", "",
        f"- date: {when}; machine: {platform.processor() or platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, load average %.2f, %.2f, %.2f at the end" % os.getloadavg(),
        f"- torch {torch.__version__}, 1 thread, autograd off; python {platform.python_version()}",
        f"- method: a scenario's variants interleaved in one process, in a fresh random order every repetition: "
        f"{settings.reps} repetitions after {settings.warmup} warm-up rounds (SmolLM2: {settings.lm_reps} after "
        f"{settings.lm_warmup}). Figures are medians (min..max beside them); an overhead is the median of "
        "per-repetition differences against the plain equivalent timed in the same round. The peer runs the same "
        "scenario code in its own interpreter right after nnglass's block of each scenario.",
        f"- command: `python benchmarks/run.py{''.join(' ' + a for a in argv)}`, {seconds:.0f} s in all", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
