"""Bad requests get the right status and message, and the server keeps serving normal requests after each."""
import json
import sys
import threading

import httpx
import pytest
import torch

import nnglass
from nnglass.intervention.trace import Trace as Tracer
from nnglass.remote import serialize
from nnglass.remote.client import RemoteError
from nnglass.server import Limits
from tests.server.serving import hosting, tiny_model

LIMITS = Limits(max_request_bytes=64 * 1024, max_nodes=200, job_timeout_s=1.0, max_loop_iterations=10**9,
                isolate=False)  # jobs on threads here: the forked kind are tested in test_isolation


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server"), LIMITS) as served:
        yield served


@pytest.fixture
def tiny(hosted):
    return tiny_model()


@pytest.fixture(autouse=True)
def still_serving(tiny, net, x):
    """After each test, a normal remote trace still gives the local result."""
    yield
    with tiny.trace(x, remote=True):
        out = tiny.output.save()
    assert torch.equal(out.value, net(x))


def recorded(model, x, record) -> dict:
    """The request a trace of `record()` would send (recorded, not run)."""
    tracer = Tracer(model, (x,), {}, run=False)
    with tracer:
        record()
    data = serialize.request(tracer)
    data["model"] = "tiny"
    return data


def post(hosted, body, token=None) -> httpx.Response:
    """POST a request (bytes, or a dict sent as JSON) with the test key, another token, or none ("")."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    token = hosted.token if token is None else token
    headers = {"Content-Type": "application/json", **({"X-API-Key": token} if token else {})}
    return httpx.post(f"{hosted.url}/jobs", content=content, headers=headers)


def refused(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in response.json()["detail"]


def test_malformed_json(hosted):
    refused(post(hosted, b'{"graphs": [1, 2'), 400, "not valid JSON")
    refused(post(hosted, b"[1, 2]"), 400, "must be a JSON object")


def test_wrong_shape_and_wrong_version(hosted, tiny, x):
    data = recorded(tiny, x, lambda: tiny.output.save())
    refused(post(hosted, {**data, "graphs": "nope"}), 422, "graphs: Input should be a valid list")
    refused(post(hosted, {**data, "wire": 99}), 400, "this server reads wire format 2")


def test_unknown_model(hosted, tiny, x):
    data = recorded(tiny, x, lambda: tiny.output.save())
    refused(post(hosted, {**data, "model": "gpt-9"}), 404, "model 'gpt-9' is not hosted on this server; it hosts: tiny")
    data["graphs"][0]["meta"]["model"] = "gpt-9"
    refused(post(hosted, data), 404, "'gpt-9' is not hosted")


def test_a_target_outside_the_allow_list_is_refused(hosted, tiny, x):
    data = recorded(tiny, x, lambda: torch.argmax(tiny.output).save())
    node = next(n for n in data["graphs"][0]["nodes"] if n["target"] == "torch.argmax")
    node["target"] = "os.system"
    refused(post(hosted, data), 400, "'os.system' is not an allowed function")


def test_a_dunder_attribute_is_refused(hosted, tiny, x):
    data = recorded(tiny, x, lambda: tiny.output.T.save())
    node = next(n for n in data["graphs"][0]["nodes"] if n["op"] == "getattr")
    node["target"] = "__class__"
    refused(post(hosted, data), 400, "attribute '__class__' is not allowed")


def test_a_user_function_is_refused_at_submission_with_its_name(tiny, x):
    def secret_sauce(value):
        return value

    with pytest.raises(ValueError, match="secret_sauce' is not allowed in a remote graph"):
        with tiny.trace(x, remote=True):
            nnglass.apply(secret_sauce, tiny.output).save()


def test_an_oversized_request_is_refused(tiny):
    with pytest.raises(RemoteError, match="accepts at most 65,536") as error:
        with tiny.trace(torch.rand(5000, 5), remote=True):
            tiny.output.save()
    assert error.value.status_code == 413


def test_too_many_nodes_are_refused(tiny, x):
    with pytest.raises(RemoteError, match="runs at most 200 per request") as error:
        with tiny.trace(x, remote=True):
            out = tiny.output
            for _ in range(250):
                out = out + 1
    assert error.value.status_code == 413


def test_missing_unknown_and_revoked_keys(hosted, tiny, x):
    data = recorded(tiny, x, lambda: tiny.output.save())
    refused(post(hosted, data, token=""), 401, "missing API key")
    refused(post(hosted, data, token="nng_not-a-key"), 403, "unknown API key")
    key, token = hosted.app.state.keys.create("leaver")
    assert post(hosted, data, token=token).status_code == 200
    hosted.app.state.keys.revoke("leaver")
    refused(post(hosted, data, token=token), 403, "this API key ('leaver') was revoked")


def test_the_client_raises_the_servers_reason(tiny, x, monkeypatch):
    monkeypatch.setenv("NNGLASS_API_KEY", "nng_wrong")
    with pytest.raises(RemoteError, match=r"refused the request \(403\): unknown API key"):
        with tiny.trace(x, remote=True):
            tiny.output.save()
    monkeypatch.setenv("NNGLASS_HOST", "http://127.0.0.1:9")
    with pytest.raises(RemoteError, match="cannot reach the nnglass server at http://127.0.0.1:9"):
        with tiny.trace(x, remote=True):
            tiny.output.save()


def test_a_job_past_the_time_limit_ends_with_error(tiny):
    with pytest.raises(RemoteError, match="longer than this server's limit of 1 s") as error:
        with tiny.session(remote=True) as session:
            with session.iter(nnglass.apply(range, 10**9)):
                pass
    assert error.value.error == "TimeoutError"
    # stopping the job left the interpreter sound: code runs under a profiler (CPython 3.11 spun forever here
    # when a pending thread exception was cancelled instead of raised)
    profiled = threading.Thread(target=count_calls, args=(lambda: sum(range(10)),), daemon=True)
    profiled.start()
    profiled.join(10)
    assert not profiled.is_alive()


def count_calls(fn) -> int:
    """Calls made by fn, counted with a profile function (as the benchmarks do)."""
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(event))
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(calls)


def test_jobs_are_private_and_results_are_handed_out_once(hosted, tiny, x):
    job = post(hosted, recorded(tiny, x, lambda: tiny.output.save())).json()["job_id"]
    _, other = hosted.app.state.keys.create("other")
    mine, theirs = {"X-API-Key": hosted.token}, {"X-API-Key": other}
    statuses = httpx.get(f"{hosted.url}/jobs/{job}/status", params={"since": 0, "wait": 5}, headers=mine).json()
    while statuses[-1]["status"] != "COMPLETED":
        statuses += httpx.get(f"{hosted.url}/jobs/{job}/status", params={"since": len(statuses)}, headers=mine).json()
    assert [s["status"] for s in statuses] == ["RECEIVED", "QUEUED", "RUNNING", "COMPLETED"]
    assert httpx.get(f"{hosted.url}/jobs/{job}/result", headers=theirs).status_code == 404
    first = httpx.get(f"{hosted.url}/jobs/{job}/result", headers=mine)
    assert first.status_code == 200 and int(first.headers["content-length"]) == len(first.content)
    refused(httpx.get(f"{hosted.url}/jobs/{job}/result", headers=mine), 410, "downloaded already")
