"""Page: the HTML status page at `/`: the hosted models, their queues, running jobs and throughput, kept live.

The figures are rendered here, so the page shows them without JavaScript; a small inline script then
fetches `/status` every second and rewrites each figure's text in place (textContent, never HTML).
"""
from __future__ import annotations

from html import escape
from typing import Optional

from ..remote.schema import ModelInfo, ServerStatus

__all__ = ["render"]

# the live figures: ModelInfo field, column heading, how it is shown (the same rule as `shown` in _SCRIPT)
FIGURES = (("waiting", "waiting", "count"), ("running", "running", "count"), ("running_s", "running for", "seconds"),
           ("completed_1m", "done, last min", "count"), ("per_minute", "jobs/min", "rate"),
           ("mean_s", "mean job time", "seconds"))
REFRESH_MS = 1000

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
          "table{border-collapse:collapse}th,td{padding:.35rem .9rem;border-bottom:1px solid #ddd;text-align:left}"
          "th{white-space:nowrap}.n{text-align:right;font-variant-numeric:tabular-nums}.note{color:#777;font-size:.9em}")

_SCRIPT = """
const live = document.getElementById("live");
function shown(kind, value) {
  if (value === null || value === undefined) return "\u2014";
  if (kind === "seconds") return value.toFixed(2) + " s";
  if (kind === "rate") return value.toFixed(1);
  return String(value);
}
async function refresh() {
  try {
    const response = await fetch("/status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const models = new Map((await response.json()).models.map(model => [model.name, model]));
    for (const row of document.querySelectorAll("tr[data-model]")) {
      const model = models.get(row.dataset.model);
      for (const cell of model ? row.querySelectorAll("td[data-field]") : [])
        cell.textContent = shown(cell.dataset.kind, model[cell.dataset.field]);
    }
    live.textContent = "live: updated " + new Date().toLocaleTimeString();
  } catch (error) {
    live.textContent = "cannot reach the server (" + error.message + "); retrying";
  }
}
setInterval(refresh, REFRESH_MS);
""".replace("REFRESH_MS", str(REFRESH_MS))


def render(status: ServerStatus) -> str:
    """The status page for `status`."""
    headings = "".join(f"<th class=n>{escape(heading)}</th>" for _, heading, _ in FIGURES)
    rows = "".join(_row(model) for model in status.models) or f"<tr><td colspan={3 + len(FIGURES)}>no models</td></tr>"
    return (f"<!doctype html><html><head><meta charset=utf-8><title>nnglass server</title>"
            f"<style>{_STYLE}</style></head><body><h1>nnglass server</h1>"
            f"<p>nnglass {escape(status.nnglass)} &middot; JSON at <a href=\"/status\">/status</a></p>"
            f"<table><tr><th>model</th><th>architecture</th><th class=n>parameters</th>{headings}</tr>{rows}</table>"
            f"<p class=note>jobs/min and mean job time: over the last five minutes &middot; "
            f"<span id=live>figures as of loading the page</span></p><script>{_SCRIPT}</script></body></html>")


def _row(model: ModelInfo) -> str:
    """A model's table row: its name and size, then each live figure in a cell the script can find."""
    figures = "".join(f"<td class=n data-field={field} data-kind={kind}>{escape(_shown(kind, getattr(model, field)))}"
                      "</td>" for field, _, kind in FIGURES)
    name = escape(model.name)
    return (f"<tr data-model=\"{name}\"><td>{name}</td><td>{escape(model.architecture)}</td>"
            f"<td class=n>{model.parameters:,}</td>{figures}</tr>")


def _shown(kind: str, value: Optional[float]) -> str:
    """A figure as the page shows it: a count as is, seconds and rates rounded; a dash when there is none."""
    if value is None:
        return "\u2014"
    if kind == "seconds":
        return f"{value:.2f} s"
    if kind == "rate":
        return f"{value:.1f}"
    return str(value)
