"""Batching end to end: clients of several API keys, on threads of their own, submit to a real server at once."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from nnglass.intervention.trace import Trace as Tracer
from nnglass.remote.client import execute_remote
from tests.server.rounding import same
from tests.server.serving import hosting, tiny_model

CLIENTS = 8


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server")) as served:
        yield served


def experiment(model, x: torch.Tensor, value: float) -> dict:
    """Edit layer1's output, save it and the model's output (recorded on `model`, run by its backend)."""
    tracer = Tracer(model, (x,), {}, run=False)
    with tracer:
        model.layer1.output[:, 0] = value
        saved = {"hidden": model.layer1.output.save(), "out": model.output.save()}
    return {"tracer": tracer, "saved": saved}


def test_concurrent_clients_share_one_forward_and_get_their_own_rows(hosted):
    tokens = [hosted.token] + [hosted.app.state.keys.create(f"user {i}")[1] for i in range(3)]
    inputs = [torch.rand(1 + i % 3, 5, generator=torch.Generator().manual_seed(i)) for i in range(CLIENTS)]
    runs = [experiment(tiny_model(), x, float(i)) for i, x in enumerate(inputs)]
    worker = hosted.app.state.host.workers["tiny"]
    before = worker.runs
    threads = [threading.Thread(target=execute_remote, args=(run["tracer"],),
                                kwargs={"host": hosted.url, "api_key": tokens[i % len(tokens)]})
               for i, run in enumerate(runs)]
    with hosted.app.state.host.hosting.locks["tiny"]:  # the jobs wait in the queue together
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(worker) < CLIENTS:
            assert time.monotonic() < deadline, "the clients did not submit"
            time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    assert worker.runs - before == 1
    for i, (x, run) in enumerate(zip(inputs, runs)):
        local = tiny_model()
        with local.trace(x):
            local.layer1.output[:, 0] = float(i)
            hidden, out = local.layer1.output.save(), local.output.save()
        assert run["saved"]["hidden"].value.shape == (x.shape[0], 10)  # its own rows only
        assert same(run["saved"]["hidden"].value, hidden.value) and same(run["saved"]["out"].value, out.value)
