"""The SmolLM2 result tables: nnglass's timings of a scenario, the peer library's beside them, and headlines.

Each table also carries its headline overheads (wall clock, CPU time, outside the forward, each with the
standard error of its median) for targets.py and plot.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import VARIANT_COLUMNS, Measurement, Settings, Table, median_us, paired, quartiles_us, variant_rows
from lm_measure import CPU, OUTSIDE, PHASES
from lm_specs import LAYERS, SPECS, STOP_LAYERS, Spec
from peer import peer_note


@dataclass
class LMTable(Table):
    """A scenario table that also carries its headline overheads (for the plot and the targets)."""

    headlines: list[dict[str, Any]] = field(default_factory=list)



@dataclass(frozen=True)
class Side:
    """One library's result for a scenario, with its rows by variant."""

    who: str
    result: dict[str, Any]
    rows: dict[str, dict[str, Any]]


def lm_table(name: str, settings: Settings, ours: dict[str, Any], peer: dict[str, Any] | None) -> LMTable:
    """The scenario's table: nnglass's standard columns, overhead %, then the peer's columns if it ran."""
    spec = SPECS[name]
    mine = Side("nnglass", ours, _rows(spec, ours))
    theirs = None if peer is None else Side(peer.get("library", "peer"), peer, _rows(spec, peer))
    table = LMTable(spec.title, _columns(theirs))
    for variant in [*spec.variants, *(f"{v}: {ph}" for ph in PHASES for v in spec.variants)]:
        if variant in spec.variants or variant in mine.rows or (theirs is not None and variant in theirs.rows):
            table.add(**_row(spec, variant, mine, theirs))
    table.headlines += [_headline(name, label, variant, mine, theirs) for label, variant in spec.headlines]
    table.notes += [*spec.notes, *_method_notes(settings), *_ratio_notes(name, mine, theirs)]
    if theirs is not None:
        table.notes.append(peer_note(theirs.result, theirs.who))
    return table


def _columns(theirs: Side | None) -> list[str]:
    """nnglass's standard columns with overhead %, then the peer's if it ran."""
    columns = [*VARIANT_COLUMNS[:7], "overhead %", *VARIANT_COLUMNS[7:]]
    if theirs is None:
        return columns
    p = theirs.who
    return columns + [f"{p} median µs", f"{p} min µs", f"{p} max µs", f"{p} overhead µs", f"{p} overhead %",
                      f"{p} ratio", f"overhead nnglass/{p}"]


def _row(spec: Spec, variant: str, mine: Side, theirs: Side | None) -> dict[str, Any]:
    """One variant's (or phase's) row: nnglass's figures or why it has none, then the peer's."""
    phase = variant not in spec.variants
    row = dict(mine.rows.get(variant)
               or {"variant": variant, "median µs": None if phase else _failure(spec, mine.result, variant)})
    if theirs is not None:
        row.update(_peer_cells(spec, variant, row, theirs))
    return row


def _peer_cells(spec: Spec, variant: str, row: dict[str, Any], theirs: Side) -> dict[str, Any]:
    """The peer's cells of a row, with the ratio of nnglass's overhead to the peer's."""
    p, other = theirs.who, theirs.rows.get(variant)
    if other is None:
        phase = variant not in spec.variants
        return {f"{p} median µs": None if phase else _failure(spec, theirs.result, variant) or "failed: no figures"}
    cells = {f"{p} median µs": other["median µs"], f"{p} min µs": other["min µs"], f"{p} max µs": other["max µs"],
             f"{p} overhead µs": other.get("overhead µs"), f"{p} overhead %": other.get("overhead %"),
             f"{p} ratio": other.get("ratio")}
    a, b = row.get("overhead µs"), other.get("overhead µs")
    if isinstance(a, float) and isinstance(b, float):
        cells[f"overhead nnglass/{p}"] = f"{a / b:.3f}" if b > 0 else "— (peer overhead ≤ 0)"
    return cells


def _headline(name: str, label: str, variant: str, mine: Side, theirs: Side | None) -> dict[str, Any]:
    """A headline variant's overheads for nnglass and the peer, for the plot and the targets."""
    spec = SPECS[name]
    base = spec.baselines[variant]
    return {"scenario": name, "label": label, "variant": variant, "baseline": base,
            "baseline µs": mine.rows.get(base, {}).get("median µs"),
            "baseline CPU µs": mine.rows.get(f"{base}: {CPU}", {}).get("median µs"),
            "ours": _figures(mine, variant, base),
            "peer": None if theirs is None else _figures(theirs, variant, base),
            "peer name": None if theirs is None else theirs.who,
            "peer failed": None if theirs is None or variant in theirs.rows
            else _failure(spec, theirs.result, variant)}


def _rows(spec: Spec, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Standard variant rows (harness.variant_rows) of one library's result, by variant, plus overhead %."""
    samples = result.get("samples", {})
    scratch = Table("", VARIANT_COLUMNS)
    pairs = {**spec.baselines, **{f"{v}: {ph}": f"{b}: {ph}" for v, b in spec.baselines.items() for ph in PHASES}}
    baselines = {v: b for v, b in pairs.items() if v in samples and b in samples}
    variant_rows(scratch, Measurement(samples, result.get("gc_ns", {})), baselines, result.get("calls", {}))
    rows = {row["variant"]: row for row in scratch.rows}
    for variant, row in rows.items():
        if variant in baselines:  # outside the forward: in % of the baseline's whole time
            whole = baselines[variant].removesuffix(f": {OUTSIDE}")
            row["overhead %"] = row["overhead µs"] / median_us(samples[whole]) * 100
    return rows


def _uncertainty(result: dict[str, Any], variant: str, baseline: str) -> float:
    """Standard error (µs) of the median paired difference variant − baseline, from its p25..p75 range."""
    # For n differences with interquartile range IQR: σ ≈ IQR / 1.349 and the median's standard error is
    # about 1.2533 σ / √n; inf where there are no samples.
    samples = result.get("samples", {})
    if variant not in samples or baseline not in samples:
        return float("inf")
    low, _, high = quartiles_us(paired(samples, variant, baseline))
    return 1.2533 * (high - low) / 1.349 / len(samples[variant]) ** 0.5


def _failure(spec: Spec, result: dict[str, Any], variant: str) -> str | None:
    """Why a library has no figures for a variant (None if it has them)."""
    if "error" in result:
        return f"failed: {result['error']}"
    if variant in result.get("failed", {}):
        return f"failed: {result['failed'][variant]}"
    base = spec.baselines.get(variant)
    if base is not None and base in result.get("failed", {}):
        return f"failed: baseline `{base}`: {result['failed'][base]}"
    return None



def _figures(side: Side, variant: str, base: str) -> dict[str, dict[str, Any]]:
    """A headline's overheads by measure (wall, CPU time, outside the forward): µs, %, p25..p75, standard error."""
    figures = {}
    for measure_, suffix in (("wall", ""), (CPU, f": {CPU}"), (OUTSIDE, f": {OUTSIDE}")):
        row = side.rows.get(variant + suffix, {})
        figures[measure_] = {"µs": row.get("overhead µs"), "%": row.get("overhead %"),
                             "p25..p75": row.get("overhead p25..p75 µs"),
                             "se": _uncertainty(side.result, variant + suffix, base + suffix)}
    return figures


def _method_notes(settings: Settings) -> list[str]:
    """How every SmolLM2 table was measured: repetitions, tokenization, the CPU-time and outside-forward rows."""
    return [f"{settings.reps} timed repetitions after {settings.warmup} warm-up rounds (a forward takes "
            "about 0.1 s). Tokenization is inside every timed call: the plain variants call the tokenizer "
            "and then the transformers model; overhead % = overhead µs / the baseline's median.",
            f"`X: {CPU}` rows: the CPU time of the process during X (`time.process_time_ns`), which "
            "does not advance while other processes hold the CPU: on a loaded machine its paired overhead "
            "is far less noisy than the wall-clock one (memory-bandwidth contention still enters it); "
            "overhead % against the baseline's CPU time.",
            f"`X: {OUTSIDE}` rows: the wall time of X less the time inside the transformers model's "
            "forward calls (a wrapper around its `forward`): tokenizer, the library's setup and teardown, "
            "the generation loop. Their overhead is the library's cost outside the forward pass, without "
            "the forward's run-to-run noise; work done by hooks during the forward is not in it; overhead % "
            "against the baseline's whole wall time."]


def _ratio_notes(name: str, mine: Side, theirs: Side | None) -> list[str]:
    """Each library's ratios of medians that early stopping and invokes are about."""
    sides = [side for side in (mine, theirs) if side is not None]
    if name == "lm_early_stop":
        return [_early_stop_note(side) for side in sides]
    if name == "lm_invokes":
        return [f"{side.who}: 8 invokes in one trace / 8 separate traces = "
                f"{_ratio(side.rows, 'trace, 8 invokes', '8 traces')}" for side in sides]
    return []


def _early_stop_note(side: Side) -> str:
    """A library's stopped traces against its full forward, beside the share of the layers they run."""
    parts = [f"stop after layer {layer} / full forward = {_ratio(side.rows, f'trace, stop after layer {layer}', 'forward')}"
             for layer in STOP_LAYERS]
    return (f"{side.who}: " + "; ".join(parts) + f" ({len(STOP_LAYERS)} of {LAYERS} layers run: "
            + ", ".join(f"{(layer + 1) / LAYERS:.2f}" for layer in STOP_LAYERS) + " of the layers).")


def _ratio(rows: dict[str, dict], a: str, b: str) -> str:
    """Median of a / median of b, or — where either has no figures."""
    if a in rows and b in rows:
        return f"{rows[a]['median µs'] / rows[b]['median µs']:.3f}"
    return "—"
