"""The status page: rendered on the server (figures without JavaScript, names escaped), and live in a real chromium."""
import json
import re
import threading
import time

import httpx
import pytest
import torch

from nnglass import NNsight
from nnglass.remote.schema import ModelInfo, ServerStatus
from nnglass.cli import main
from nnglass.server import Limits
from nnglass.server.page import render
from tests.server.browser import Browser, chromium
from tests.server.serving import hosting, tiny_model

HOSTILE = "<img src=x onerror=\"document.title='owned'\">&'"


def cells(html: str, model: str) -> dict[str, str]:
    """The figure cells of a model's row in the rendered page, by field."""
    row = re.search(rf'<tr data-model="{re.escape(model)}">(.*?)</tr>', html).group(1)
    return dict(re.findall(r"<td class=n data-field=(\w+) data-kind=\w+>([^<]*)</td>", row))


def remote_runs(model: NNsight, count: int) -> None:
    """Run `count` blocking remote traces of model."""
    for _ in range(count):
        with model.trace(torch.ones(1, 5), remote=True):
            model.output.save()


class Gated(torch.nn.Module):
    """A model whose forward waits for its gate to open: a job that runs as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.layer = torch.nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.gate.wait(60), "the test never opened the gate"
        return self.layer(x)


# -- rendered on the server -------------------------------------------------------------------------------
def test_render_escapes_a_hostile_model_name():
    info = ModelInfo(name=HOSTILE, architecture="<b>Net</b>", parameters=1234, queue=2, waiting=1, running=1,
                     running_s=0.5, completed_1m=7, per_minute=3.25, mean_s=0.125)
    html = render(ServerStatus(nnglass="0.1.0", models=[info]))
    assert "<img" not in html and "<b>" not in html
    escaped = "&lt;img src=x onerror=&quot;document.title=&#x27;owned&#x27;&quot;&gt;&amp;&#x27;"
    assert f'<tr data-model="{escaped}"><td>{escaped}</td><td>&lt;b&gt;Net&lt;/b&gt;</td><td class=n>1,234</td>' in html
    assert cells(html, escaped) == {"waiting": "1", "running": "1", "running_s": "0.50 s", "completed_1m": "7",
                                    "per_minute": "3.2", "mean_s": "0.12 s"}


def test_render_of_an_older_server_status_and_of_no_models():
    old = ModelInfo.model_validate({"name": "tiny", "architecture": "Net", "parameters": 3, "queue": 0})
    assert set(cells(render(ServerStatus(nnglass="0.0.9", models=[old])), "tiny").values()) == {"\u2014"}
    assert "<td colspan=9>no models</td>" in render(ServerStatus(nnglass="0.1.0", models=[]))


def test_the_served_page_status_and_cli_show_running_and_finished_jobs(tmp_path, capsys):
    gated = NNsight(Gated())
    gated._remote_name = "gated"
    with hosting({"gated": gated}, tmp_path, Limits(isolate=False)) as served:  # in-process: the gate is shared
        client = threading.Thread(target=remote_runs, args=(gated, 1))
        client.start()
        try:
            deadline = time.monotonic() + 30
            while (figures := httpx.get(f"{served.url}/status").json()["models"][0])["running"] == 0:
                assert time.monotonic() < deadline, "the job was never seen running"
                time.sleep(0.02)
            assert (figures["queue"], figures["waiting"], figures["running"]) == (1, 0, 1) and figures["running_s"] >= 0
            assert re.fullmatch(r"\d+\.\d\d s", cells(httpx.get(f"{served.url}/").text, "gated")["running_s"])
            assert main(["status"]) == 0
            assert re.search(r"queue 1 \(0 waiting, 1 running \(for \d+\.\d s\)\); 0 done in the last minute, "
                             r"0\.0/min over 5 min$", capsys.readouterr().out)
        finally:
            gated._model.gate.set()
            client.join(60)
        remote_runs(gated, 1)
        figures = httpx.get(f"{served.url}/status").json()["models"][0]
        page = cells(httpx.get(f"{served.url}/").text, "gated")
        assert main(["status"]) == 0
    assert [figures[field] for field in ("running", "running_s", "completed_1m", "per_minute")] == [0, None, 2, 2.0]
    assert page == {"waiting": "0", "running": "0", "running_s": "\u2014", "completed_1m": "2", "per_minute": "2.0",
                    "mean_s": f"{figures['mean_s']:.2f} s"}
    assert capsys.readouterr().out.endswith(f"(0 waiting, 0 running); 2 done in the last minute, 2.0/min over 5 min, "
                                            f"mean {figures['mean_s']:.2f} s\n")


# -- live in a real browser -------------------------------------------------------------------------------
needs_browser = pytest.mark.skipif(chromium() is None, reason="no chromium for the browser tests: run "
                                   "scripts/install-chromium (`make test` does) or set NNGLASS_CHROMIUM")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Browser(chromium(), tmp_path_factory.mktemp("chromium")) as running:
        yield running


def shown(field: str, model: str = "tiny") -> str:
    """JavaScript: the text of a model's figure cell in the open page."""
    return (f"[...document.querySelectorAll('tr[data-model]')].find(row => row.dataset.model === {json.dumps(model)})"
            f".querySelector('td[data-field={field}]').textContent")


@needs_browser
def test_the_page_in_a_browser_lists_the_models_and_escapes_names(browser, tmp_path):
    hostile = tiny_model()
    hostile._remote_name = HOSTILE
    with hosting({"tiny": tiny_model(), HOSTILE: hostile}, tmp_path) as served:
        page = browser.open(f"{served.url}/")
        rows = page.evaluate("[...document.querySelectorAll('tr[data-model]')]"
                             ".map(row => [row.dataset.model, ...[...row.cells].map(cell => cell.textContent)])")
        assert rows == [["tiny", "tiny", "Sequential", "82", "0", "0", "\u2014", "0", "0.0", "\u2014"],
                        [HOSTILE, HOSTILE, "Sequential", "82", "0", "0", "\u2014", "0", "0.0", "\u2014"]]
        page.wait_for("document.getElementById('live').textContent.startsWith('live: updated')")
        remote_runs(hostile, 1)  # the hostile name's row is found and updated too
        page.wait_for(f"{shown('completed_1m', HOSTILE)} === '1'")
        assert page.evaluate("[document.title, document.images.length]") == ["nnglass server", 0]
        assert page.errors == []


@needs_browser
def test_the_open_page_follows_the_queue_and_throughput(browser, tmp_path):
    with hosting({"tiny": tiny_model()}, tmp_path) as served:
        page = browser.open(f"{served.url}/")
        page.evaluate("window.notReloaded = true")
        lock = served.app.state.host.hosting.locks["tiny"]
        clients = [threading.Thread(target=remote_runs, args=(tiny_model(), 1)) for _ in range(3)]
        with lock:  # the worker waits for the model: the jobs stay queued
            for client in clients:
                client.start()
            assert page.wait_for(f"{shown('waiting')} === '3' && {shown('running')}") == "0"
        for client in clients:
            client.join(60)
        page.wait_for(f"{shown('waiting')} === '0' && {shown('completed_1m')} === '3'")
        assert page.evaluate(shown("per_minute")) == "3.0"
        assert re.fullmatch(r"\d+\.\d\d s", page.evaluate(shown("mean_s")))
        assert page.evaluate("window.notReloaded") is True and page.errors == []
