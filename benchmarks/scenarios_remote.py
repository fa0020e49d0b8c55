"""Remote scenario: what sending a small trace to a server on loopback costs over running it here."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile

import torch
from harness import VARIANT_COLUMNS, Settings, Table, measure, scenario, variant_rows

from nnglass import NNsight
from nnglass.server import BackgroundServer, create_app

MIN_REPS = 30  # a median over fewer round trips says little


def _tiny() -> NNsight:
    """The two-layer model of the walkthrough (5 -> 10 -> 2), named "tiny" for the server."""
    torch.manual_seed(0)
    model = NNsight(torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2)).requires_grad_(False))
    model._remote_name = "tiny"
    return model


@scenario("remote")
def remote_round_trip(settings: Settings) -> list[Table]:
    """Remote round trip: submit, follow over the WebSocket, download, against the same trace run locally."""
    client, x = _tiny(), torch.rand(1, 5)

    def trace(remote: bool) -> None:
        with client.trace(x, remote=remote):
            client[0].output.save()
            client.output.save()

    variants = {"local": lambda: trace(False), "remote": lambda: trace(True)}
    settings = dataclasses.replace(settings, reps=max(settings.reps, MIN_REPS), warmup=max(settings.warmup, 3))
    table = Table("Remote round trip: 2-layer model, save 2 values, server in this process on 127.0.0.1",
                  ["transport", *VARIANT_COLUMNS])
    with _hosted(), _quiet():
        measured = measure(variants, settings)
    variant_rows(table, measured, {"remote": "local"}, {}, transport="WebSocket")
    table.notes += [
        f"overhead = median over {settings.reps} repetitions of (remote − local) in the same round: submit (POST), "
        "status over a WebSocket, result download (GET), decoding; the server runs the job on a thread of its own.",
        "Client and server share this process (and its GIL), so this is an upper bound for loopback.",
    ]
    return [table]


@contextlib.contextmanager
def _hosted():
    """A server hosting the tiny model, with nnglass.CONFIG pointed at it through its environment variables."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app({"tiny": _tiny()}, f"sqlite:///{folder}/keys.db")
        _, token = app.state.keys.create("bench")
        with BackgroundServer(app) as url, _environment(NNGLASS_HOST=url, NNGLASS_API_KEY=token):
            yield


@contextlib.contextmanager
def _environment(**values: str):
    """Environment variables set while the block runs."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet():
    """No status lines and no download bars while timing (they would be timed, and flood the terminal)."""
    logger = logging.getLogger("nnglass.remote")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
