"""The overhead plot (overhead.png): bars per SmolLM2 headline for nnglass and the peer library."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import Table
from lm_measure import CPU, OUTSIDE
from lm_specs import ONE_SAVE_GOAL_PCT

# (measure, unit of the bar's height, scale to the axis unit, y label, title), one panel each
PANELS = (("wall", "%", 1.0, "% of the plain call", "whole call, wall clock (labels: ms; error bars: ±2 standard "
                                                    "errors of the median)"),
          (CPU, "%", 1.0, "% of the plain call", "whole call, CPU time of the process (steadier under load)"),
          (OUTSIDE, "µs", 1e-3, "ms", "outside the model's forward: tokenizer, setup, teardown, generation loop"))


def plot_overhead(tables: list[Table], path: Path) -> bool:
    """Bars per SmolLM2 headline for nnglass and the peer: overhead by wall time, CPU time and outside the forward."""
    heads = [h for t in tables for h in getattr(t, "headlines", ())]
    if not heads:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peer = next((h["peer name"] for h in heads if h["peer name"]), None)
    series = [("nnglass", "ours", "#2a7ab9")] + ([(peer, "peer", "#d9822b")] if peer else [])
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(11, 11), sharex=True, layout="constrained")
    for ax, panel in zip(axes, PANELS):
        _panel(ax, heads, series, panel)
    for ax in axes[:2]:
        ax.axhline(ONE_SAVE_GOAL_PCT, color="grey", linestyle="--", linewidth=1,
                   label=f"goal for one save: {ONE_SAVE_GOAL_PCT:g} %")
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(list(range(len(heads))), [h["label"] for h in heads], rotation=15, ha="right")
    fig.suptitle("SmolLM2-135M on CPU (1 thread): trace overhead over plain transformers calls "
                 "(labels under the bars: overhead in ms)", fontsize=11)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _panel(ax: Any, heads: list[dict[str, Any]], series: list[tuple[str, str, str]], panel: tuple) -> None:
    """One measure's bars, a group per headline and a bar per library, with ±2 standard-error bars."""
    key, unit, scale, ylabel, title = panel
    width = 0.8 / len(series)
    for i, (who, side, colour) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        figs = [(h[side] or {}).get(key, {}) for h in heads]
        heights = [(f.get(unit) or 0.0) * scale for f in figs]
        errors = [_error(f, unit, scale) for f in figs]
        bars = ax.bar([v + offset for v in range(len(heads))], heights, width, yerr=errors, capsize=3, label=who,
                      color=colour, error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
        _label(ax, bars, figs, [bool(side == "peer" and h["peer failed"]) for h in heads])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)


def _error(f: dict[str, Any], unit: str, scale: float) -> float:
    """Two standard errors in the panel's unit: µs scaled, or % via the same ratio as the overhead."""
    se, us_ = f.get("se", float("inf")), f.get("µs")
    if se == float("inf") or not us_ or f.get(unit) is None:
        return 0.0
    return 2 * se * (scale if unit == "µs" else f[unit] / us_)


def _label(ax: Any, bars: Any, figs: list[dict[str, Any]], failed: list[bool]) -> None:
    """Under each bar its overhead in ms, or why it has none."""
    for bar, f, fail in zip(bars, figs, failed):
        value_us = f.get("µs")
        text = ("failed" if fail else "—") if value_us is None else f"{value_us / 1000:,.2f}"
        y = bar.get_height()
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, 0), ha="center", fontsize=7,
                    va="top" if y >= 0 else "bottom", xytext=(0, -2 if y >= 0 else 2),
                    textcoords="offset points", color="#333333")
