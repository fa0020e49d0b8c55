"""Page: the HTML status page at `/`: the hosted models and their queues."""
from __future__ import annotations

from html import escape

from ..remote.schema import ServerStatus

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
          "table{border-collapse:collapse}th,td{padding:.35rem .9rem;border-bottom:1px solid #ddd;text-align:left}"
          "td.n{text-align:right;font-variant-numeric:tabular-nums}")


def render(status: ServerStatus) -> str:
    """The status page for `status`."""
    rows = "".join(
        f"<tr><td>{escape(m.name)}</td><td>{escape(m.architecture)}</td>"
        f"<td class=n>{m.parameters:,}</td><td class=n>{m.queue}</td></tr>"
        for m in status.models) or "<tr><td colspan=4>no models</td></tr>"
    return (f"<!doctype html><html><head><meta charset=utf-8><title>nnglass server</title>"
            f"<style>{_STYLE}</style></head><body><h1>nnglass server</h1>"
            f"<p>nnglass {escape(status.nnglass)} &middot; JSON at <a href=\"/status\">/status</a></p>"
            f"<table><tr><th>model</th><th>architecture</th><th>parameters</th><th>queue</th></tr>{rows}</table>"
            f"</body></html>")
