"""The Ray backend on a real local Ray cluster of two nodes: results, refusals, least-loaded replicas, a
replica killed mid-job."""
import os
import time
from collections import OrderedDict
from pathlib import Path

import httpx
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

import nnglass
from nnglass import NNsight
from nnglass.server import Limits
from nnglass.server.loading import Loader
from nnglass.server.ray_hosting import RayHosting
from tests.server.attacks.craft import attack, base_request, final, node, post, ref, refused
from tests.server.serving import hosting, tiny_model

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


class Nap(torch.nn.Module):
    """Sleeps as many seconds as its input's first element says, then doubles the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(x.flatten()[0]))
        return x * 2


def sleepy_model() -> NNsight:
    """A model whose jobs take as long as their input says, hosted as "sleepy"."""
    model = NNsight(torch.nn.Sequential(OrderedDict(nap=Nap())))
    model._remote_name = "sleepy"
    return model


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine; their workers import this checkout's nnglass and tests."""
    paths = [str(Path(nnglass.__file__).parents[1]), str(Path(__file__).parents[2])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(paths))
        cluster = Cluster(initialize_head=True, head_node_args=NODE)
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def hosted(cluster, tmp_path_factory):
    loaders = [Loader("tests.server.serving:tiny_model"), Loader("tests.server.test_ray_hosting:sleepy_model")]
    backend = RayHosting(loaders, Limits(job_timeout_s=3.0), replicas=2)
    with hosting(backend, tmp_path_factory.mktemp("server")) as served:
        yield served


def statuses(hosted, job_id, until):
    """The job's statuses once one of them is `until` (polling)."""
    seen, deadline = [], time.monotonic() + 60
    while not any(s["status"] == until for s in seen):
        assert time.monotonic() < deadline, seen
        seen += httpx.get(f"{hosted.url}/jobs/{job_id}/status", params={"since": len(seen), "wait": 5},
                          headers={"X-API-Key": hosted.token}, timeout=30).json()
    return seen


def nap(hosted, seconds):
    """Submit a job to "sleepy" that runs `seconds`; its id once it runs, and the replica it runs on."""
    data = base_request(torch.tensor([[seconds]]))
    data["model"] = data["graphs"][0]["meta"]["model"] = "sleepy"
    data["graphs"][0]["nodes"][0]["target"] = "nap"
    job = post(hosted, data).json()["job_id"]
    running = statuses(hosted, job, "RUNNING")[-1]["description"]
    return job, int(running.rstrip(".").split()[-1])


def replica_of(hosted, job_id):
    """The replica a finished job ran on."""
    running = next(s for s in statuses(hosted, job_id, "RUNNING") if s["status"] == "RUNNING")
    return int(running["description"].rstrip(".").split()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the load fails for want of CUDA")
def test_a_replica_that_cannot_load_its_models_stops_the_start(cluster):  # before `hosted` takes the CPUs
    with pytest.raises(RuntimeError, match="a replica could not load the models: RuntimeError: device 'cuda'"):
        RayHosting([Loader("tests.server.serving:tiny_model", device="cuda")], Limits())


def test_the_api_process_keeps_no_weights(hosted):
    backend = hosted.app.state.host.hosting
    assert {p.device.type for m in backend.models.values() for p in m._model.parameters()} == {"meta"}
    models = httpx.get(f"{hosted.url}/status").json()["models"]
    assert [(m["name"], m["parameters"]) for m in models] == [("tiny", 82), ("sleepy", 0)]


def test_remote_runs_equal_local_runs(hosted, net, x):
    model = tiny_model()
    with model.trace(x, remote=True):
        hidden = model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        out = model.output.save()
    edited = net.layer1(x)
    edited[:, 0] = 0
    assert torch.equal(hidden.value, net.layer1(x)) and torch.equal(out.value, net.layer2(edited))


def test_a_session_across_models_runs_on_one_replica_and_logs_come_back(hosted, net, x, capsys):
    first, sleepy = tiny_model(), sleepy_model()
    with first.session(remote=True) as session:
        with first.trace(x):
            hidden = first.layer1.output
        with sleepy.trace(torch.zeros(1, 10)):
            sleepy.nap.output = hidden * 2
            out = sleepy.output.save()
        session.log("from", "a replica")
    assert torch.equal(out.value, net.layer1(x) * 2)
    assert capsys.readouterr().out == "from a replica\n"


def test_a_bad_request_is_refused_before_any_replica_sees_it(hosted, net, x):
    refused(post(hosted, attack(x, node("output", "layer9"))), 400, "no module 'layer9'")
    response = post(hosted, attack(x, node("call_method", "sum", ref(0), saved=True)))
    assert final(hosted, response.json()["job_id"])["status"] == "COMPLETED"


def test_jobs_go_to_the_least_loaded_replica(hosted, x):
    slow, busy = nap(hosted, 2.0)
    quick = post(hosted, attack(x, node("call_method", "sum", ref(0), saved=True))).json()["job_id"]
    assert final(hosted, quick)["status"] == "COMPLETED" and replica_of(hosted, quick) == 1 - busy
    assert httpx.get(f"{hosted.url}/jobs/{slow}/status", params={"wait": 0},  # the slow job still runs
                     headers={"X-API-Key": hosted.token}).json()[-1]["status"] == "RUNNING"
    assert final(hosted, slow)["status"] == "COMPLETED"


def test_a_job_waits_in_its_queue_while_every_replica_is_busy(hosted, x):
    naps = [nap(hosted, 1.5)[0] for _ in range(2)]  # one on each replica
    quick = post(hosted, attack(x, node("call_method", "sum", ref(0), saved=True))).json()["job_id"]
    assert final(hosted, quick)["status"] == "COMPLETED"
    started = next(s["timestamp"] for s in statuses(hosted, quick, "RUNNING") if s["status"] == "RUNNING")
    assert started >= min(final(hosted, job)["timestamp"] for job in naps)


def test_a_replica_killed_mid_job_fails_that_job_and_restarts(hosted, net, x):
    slots = hosted.app.state.host.hosting.replicas
    job, index = nap(hosted, 60.0)
    killed = slots[index]
    pid = ray.get(killed.back)
    ray.kill(killed.actor, no_restart=False)
    last = final(hosted, job)
    assert last["status"] == "ERROR" and last["error"] == "ReplicaDied"
    assert f"replica {index}) died" in last["description"] and "send the job again" in last["description"]
    after = post(hosted, attack(x, node("call_method", "sum", ref(0), saved=True))).json()["job_id"]
    assert final(hosted, after)["status"] == "COMPLETED" and replica_of(hosted, after) == 1 - index
    assert ray.get(killed.back, timeout=60) != pid  # Ray restarted the replica in a new process


def test_a_job_stuck_past_the_time_limit_gets_its_replica_killed(hosted):
    job, index = nap(hosted, 30.0)  # a sleep: the JobTimeout raised inside the actor waits for it to return
    last = final(hosted, job)
    assert last["status"] == "ERROR" and last["error"] == "TimeoutError"
    assert f"limit of 3 s (Limits.job_timeout_s) and did not stop, so its replica (replica {index}) was killed" \
        in last["description"]
