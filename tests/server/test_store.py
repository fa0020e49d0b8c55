"""Durable jobs: a server killed with SIGKILL and started again on the same database and data folder."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import torch

from nnglass import NNsight
from nnglass.intervention.trace import Trace as Tracer
from nnglass.remote import serialize
from nnglass.server import KeyStore, Limits
from tests.server.restarting import Held
from tests.server.serving import hosting, tiny_model


def recorded(model, x):
    """A trace saving the output, recorded (not run), and its saved proxy."""
    tracer = Tracer(model, (x,), {}, run=False)
    with tracer:
        out = model.output.save()
    return tracer, out


@contextlib.contextmanager
def serving(db, data, hold):
    """A server process (tests/server/restarting.py) on a free port; killed with SIGKILL at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tests.server.restarting", str(db), str(data), str(port),
                                str(hold)], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not come up"
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/status")
                break
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the server and any job process it forked
        process.wait(30)


class Client:
    """Submits recorded traces to a server and reads their statuses."""

    def __init__(self, url, token):
        self.url, self.headers = url, {"X-API-Key": token}

    def submit(self, model, x) -> str:
        tracer, _ = recorded(model, x)
        data = {**serialize.request(tracer), "model": model._remote_name}
        return httpx.post(f"{self.url}/jobs", json=data, headers=self.headers).json()["job_id"]

    def statuses(self, job) -> list[dict]:
        return httpx.get(f"{self.url}/jobs/{job}/status", params={"wait": 0}, headers=self.headers).json()

    def until(self, job, status) -> list[dict]:
        """The job's statuses, once it has reached `status` (or ended)."""
        deadline = time.monotonic() + 60
        while True:
            statuses = self.statuses(job)
            if statuses[-1]["status"] in (status, "COMPLETED", "ERROR"):
                return statuses
            assert time.monotonic() < deadline, statuses
            time.sleep(0.05)

    def result(self, job) -> httpx.Response:
        return httpx.get(f"{self.url}/jobs/{job}/result", headers=self.headers)


def value(model, x, response):
    """The saved output that a result response holds."""
    tracer, out = recorded(model, x)
    serialize.apply_results(tracer, response.json())
    return out.value


def test_a_killed_server_keeps_finished_queued_and_failed_jobs(tmp_path, net, x):
    db, data, hold = tmp_path / "nnglass.db", tmp_path / "data", tmp_path / "hold"
    _, token = KeyStore(str(db)).create("tester")
    tiny, slow = tiny_model(), NNsight(Held(str(hold)))
    slow._remote_name = "slow"
    hold.touch()
    with serving(db, data, hold) as url:
        client = Client(url, token)
        finished, taken = client.submit(tiny, x), client.submit(tiny, x)
        client.until(finished, "COMPLETED"), client.until(taken, "COMPLETED")
        assert client.result(taken).status_code == 200
        running = client.submit(slow, x)
        client.until(running, "RUNNING")
        queued = [client.submit(slow, x) for _ in range(2)]
        assert [client.statuses(job)[-1]["position"] for job in queued] == [1, 2]
        assert len(list((data / "requests").iterdir())) == 3 and len(list((data / "results").iterdir())) == 1
    hold.unlink()
    with serving(db, data, hold) as url:
        client = Client(url, token)
        # a finished result still downloads, with its statuses; a downloaded one stays downloaded
        assert [s["status"] for s in client.statuses(finished)] == ["RECEIVED", "QUEUED", "RUNNING", "COMPLETED"]
        assert torch.equal(value(tiny, x, client.result(finished)), net(x))
        assert client.result(taken).status_code == 410 and "downloaded already" in client.result(taken).text
        # the job that was running ended with an error that says so; it was not run again
        last = client.until(running, "ERROR")[-1]
        assert last["status"] == "ERROR" and last["error"] == "ServerRestarted"
        assert "restarted while this job ran" in last["description"] and "not run again" in last["description"]
        # the queued jobs were queued again in their order and ran
        first, second = (client.until(job, "COMPLETED") for job in queued)
        assert [s["status"] for s in second[-3:]] == ["QUEUED", "RUNNING", "COMPLETED"]
        assert (first[-3]["position"], second[-3]["position"]) == (0, 1)
        assert first[-1]["timestamp"] <= second[-2]["timestamp"]
        assert all(torch.equal(value(slow, x, client.result(job)), x * 2) for job in queued)
        assert list((data / "requests").iterdir()) == list((data / "results").iterdir()) == []  # all downloaded
        fresh = client.submit(tiny, x)  # new jobs are taken as before
        client.until(fresh, "COMPLETED")
        assert torch.equal(value(tiny, x, client.result(fresh)), net(x))


def test_results_expire_with_their_files(tmp_path, net, x):
    with hosting({"tiny": tiny_model()}, tmp_path, Limits(result_ttl_s=0.5)) as served:
        client = Client(served.url, served.token)
        job = client.submit(tiny_model(), x)
        assert client.until(job, "COMPLETED")[-1]["status"] == "COMPLETED"
        stored = tmp_path / "keys-jobs" / "results" / f"{job}.json"
        assert stored.exists()
        time.sleep(0.6)
        gone = httpx.get(f"{served.url}/jobs/{job}/status", headers=client.headers)
        assert gone.status_code == 404 and "expired" in gone.json()["detail"] and not stored.exists()
        fresh = client.submit(tiny_model(), x)
        client.until(fresh, "COMPLETED")
        assert torch.equal(value(tiny_model(), x, client.result(fresh)), net(x))
