"""Two hosted models: the status endpoints, sessions across models, queue positions, polling without WebSockets."""
import logging
import os
import subprocess
import sys

import httpx
import pytest
import torch

from nnglass.intervention.trace import Trace as Tracer
from nnglass import remote
from nnglass.remote import serialize
from nnglass.remote.client import execute_remote
from nnglass.remote.schema import JobStatus
from nnglass.server import BackgroundServer, Limits
from tests.server.serving import hosting, tiny_model


def flipped():
    """The tiny net with layer2's weights negated, hosted as "tiny2"."""
    model = tiny_model()
    model._remote_name = "tiny2"
    with torch.no_grad():
        model.layer2.weight.mul_(-1)
    return model


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model(), "tiny2": flipped()}, tmp_path_factory.mktemp("server")) as served:
        yield served


def recorded(model, x):
    """A trace saving the output, recorded (not run), and its saved proxy."""
    tracer = Tracer(model, (x,), {}, run=False)
    with tracer:
        out = model.output.save()
    return tracer, out


def test_status_lists_the_hosted_models(hosted):
    status = httpx.get(f"{hosted.url}/status").json()
    idle = {"queue": 0, "waiting": 0, "running": 0, "running_s": None, "completed_1m": 0, "per_minute": 0.0,
            "mean_s": None}  # the first test of the module: no job ran yet
    assert status["models"] == [
        {"name": "tiny", "architecture": "Sequential", "parameters": 82, **idle},
        {"name": "tiny2", "architecture": "Sequential", "parameters": 82, **idle}]
    page = httpx.get(f"{hosted.url}/")
    assert page.headers["content-type"].startswith("text/html")
    assert "<td>tiny2</td><td>Sequential</td><td class=n>82</td>" in page.text


def test_a_session_across_two_models_matches_local(hosted, x):
    first, second = tiny_model(), flipped()

    def run(remote):
        with first.session(remote=remote):
            with first.trace(x):
                hidden = first.layer1.output
            with second.trace(x):
                second.layer1.output = hidden * 2
                out = second.output.save()
        return out.value

    assert torch.equal(run(False), run(True))


def test_queued_jobs_learn_their_position(tmp_path, x):
    requests = []
    for _ in range(3):
        data = serialize.request(recorded(tiny_model(), x)[0])
        requests.append({**data, "model": "tiny"})
    with hosting({"tiny": tiny_model()}, tmp_path, Limits(batch_size=1)) as hosted:  # one job per forward
        key = {"X-API-Key": hosted.token}
        with hosted.app.state.host.hosting.locks["tiny"]:  # the worker waits for the model meanwhile
            jobs = [httpx.post(f"{hosted.url}/jobs", json=data, headers=key).json()["job_id"] for data in requests]
            assert httpx.get(f"{hosted.url}/status").json()["models"][0]["queue"] == 3
        for position, job in enumerate(jobs):
            statuses = httpx.get(f"{hosted.url}/jobs/{job}/status", params={"wait": 0}, headers=key).json()
            assert statuses[1]["status"] == "QUEUED" and statuses[1]["position"] == position
        ended = [remote.job(job).wait().status for job in jobs]  # the first ran while the others waited
        positions = [[s["position"] for s in httpx.get(f"{hosted.url}/jobs/{job}/status", headers=key).json()
                      if s["status"] == "QUEUED"] for job in jobs]
    assert ended == [JobStatus.COMPLETED] * 3 and positions == [[0], [1], [2, 1]]  # the last moved up when the second started


def test_polling_when_the_server_has_no_websockets(hosted, net, x, caplog):
    tracer, out = recorded(tiny_model(), x)
    caplog.set_level(logging.DEBUG, logger="nnglass.remote")
    with BackgroundServer(hosted.app, ws="none", lifespan="off") as url:
        with httpx.Client(base_url=url) as http:
            execute_remote(tracer, http=http)
    assert torch.equal(out.value, net(x))
    messages = [r.getMessage() for r in caplog.records if r.name == "nnglass.remote"]
    assert "polling instead" in messages[0]
    assert [m.split(" - ")[1].split(":")[0] for m in messages[1:]] == ["RECEIVED", "QUEUED", "RUNNING", "COMPLETED"]


def test_hosting_in_process_never_imports_ray(tmp_path):
    code = ("import sys; from nnglass.server import create_app; from tests.server.serving import tiny_model; "
            f"create_app({{'tiny': tiny_model()}}, 'sqlite:///{tmp_path / 'keys.db'}'); "
            "import nnglass.cli; assert 'ray' not in sys.modules, 'ray was imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
