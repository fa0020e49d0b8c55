"""Fuzzing the submit endpoint: random JSON, mutated valid requests and random graphs never get a 5xx.

The three strategies call the endpoint's handler (`Host.submit`, what `POST /jobs` runs after reading the
body) directly: an exception other than an HTTPException there is what a 500 would be. A fourth sends
random bodies over HTTP to the real server. NNGLASS_FUZZ_EXAMPLES sets the examples per strategy (default
1000: 3,000 handler calls and 50 HTTP requests in CI; a benchmark run sets more). Every accepted job must
reach a final status, and the server must serve a normal trace after.
"""
import json
import os
import time
import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi import HTTPException

from nnglass.server import Limits
from tests.server.attacks.craft import base_request, node, ref
from tests.server.serving import hosting, tiny_model

EXAMPLES = int(os.environ.get("NNGLASS_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
LIMITS = Limits(max_tensor_elements=2**20, max_products=2**26, max_loop_iterations=1_000, job_timeout_s=5.0)

OPS = ["getattr", "setattr", "call_method", "call_function", "input", "current", "swap", "grad", "backward",
       "log", "cond", "stop", "exit", "item", "trace", "iter", "output", "inputs", "call_module", "nope"]
TARGETS = ["torch.add", "torch.zeros", "torch.cat", "operator.getitem", "operator.add", "builtins.range", "sum",
           "shape", "layer1", "layer2", "loop", "session", "format", "__class__", "torch.load", 0, 1, None, "T"]
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
tags = st.sampled_from(["$node", "$float", "$tuple", "$dict", "$slice", "$ellipsis", "$dtype", "$device", "$set",
                        "$complex", "$bytes", "$dataloader", "$tensor", "$output", "$nope"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | tags, inner, max_size=4)
                      | st.builds(lambda tag, v: {tag: v}, tags, inner), max_leaves=20)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server"), LIMITS) as served:
        yield served


class Submitter:
    """Hands bodies to the server's submit handler and remembers the jobs it accepted."""

    def __init__(self, hosted) -> None:
        self.hosted = hosted
        self.owner = hosted.app.state.keys.check(hosted.token).id
        self.accepted: list = []

    def __call__(self, body) -> None:
        """Submit body; a 4xx is fine, any other exception is a 500."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            job_id = self.hosted.app.state.host.submit(content, self.owner).job_id
            self.accepted.append(self.hosted.app.state.host.jobs.find(job_id, self.owner))
        except HTTPException as error:
            assert 400 <= error.status_code < 500, (error, content[:500])


@pytest.fixture(scope="module")
def submit(hosted):
    submitter = Submitter(hosted)
    yield submitter
    deadline = time.monotonic() + 120
    while any(job.ended is None for job in submitter.accepted) and time.monotonic() < deadline:
        time.sleep(0.1)
    # every job the server took reaches COMPLETED or ERROR
    assert all(job.statuses[-1].status.final for job in submitter.accepted)


@pytest.fixture(scope="module")
def valid() -> str:
    """A valid request as JSON text (each example parses its own copy)."""
    return json.dumps(base_request(torch.rand(1, 5)))


@FUZZ
@given(body=values)
def test_random_json(submit, body):
    submit(body)


@settings(FUZZ, max_examples=max(EXAMPLES // 20, 10))
@given(body=values | st.binary(max_size=64))
def test_random_bodies_over_http(hosted, body):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{hosted.url}/jobs", content=content, headers={"X-API-Key": hosted.token}, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text, content[:500])


def mutate(data, path: list, new):
    """data with the value at `path` (indices into lists and dicts, wrapped around) replaced by new."""
    if not path or not isinstance(data, (list, dict)) or not data:
        return new
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = keys[path[0] % len(keys)]
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[key] = mutate(data[key], path[1:], new)
    return copy


@FUZZ
@given(path=st.lists(st.integers(0, 50), max_size=8), new=values, extra=st.lists(values, max_size=3))
def test_mutated_valid_requests(submit, valid, path, new, extra):
    data = json.loads(valid)
    data["graphs"][0]["nodes"].append(node("call_method", "sum", ref(0), *extra, saved=True))
    submit(mutate(data, path, new))


graph_nodes = st.lists(st.builds(
    lambda op, target, args, deps, kwargs: {"op": op, "target": target, "args": {"$tuple": args},
                                            "kwargs": {"$dict": kwargs}, "deps": deps, "invoke": 0,
                                            "saved": True, "where": None},
    st.sampled_from(OPS), st.sampled_from(TARGETS),
    st.lists(st.builds(lambda i: ref(i), st.integers(-1, 6)) | scalars, max_size=3),
    st.lists(st.tuples(st.integers(0, 1), st.integers(-1, 6)), max_size=2),
    st.lists(st.tuples(st.sampled_from(["dim", "lr", "device", "num_workers", "x"]), scalars), max_size=2)),
    min_size=1, max_size=6)


@FUZZ
@given(nodes=graph_nodes, sequential=st.booleans(), session=st.booleans())
def test_random_graphs(submit, valid, nodes, sequential, session):
    data = json.loads(valid)
    graph = data["graphs"][0]
    graph["nodes"] += nodes
    graph["kind"] = "trace" if sequential else graph["kind"]
    if session:
        data["graphs"].insert(0, {"parent": None, "kind": "session", "meta": {}, "nodes": []})
        graph["parent"] = 0
    submit(data)


def test_the_server_serves_after_the_fuzzing(hosted, submit, net, x):
    assert httpx.get(f"{hosted.url}/status").status_code == 200
    model = tiny_model()
    with model.trace(x, remote=True):
        out = model.output.save()
    assert torch.equal(out.value, net(x))
