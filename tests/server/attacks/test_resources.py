"""Resource abuse: every limit ends the job (or the request) with a message naming it; the server keeps serving."""
import time

import httpx
import pytest

from nnglass.server import Limits
from tests.server.attacks.craft import graph, attack, ended_with, final, node, post, ref, refused, session
from tests.server.serving import hosting, tiny_model

LIMITS = Limits(max_invokes=16, max_loop_iterations=1_000, max_tensor_elements=2**20, max_list_elements=2**12,
                max_products=2**29, max_log_lines=20, max_held_bytes=2**16, job_timeout_s=5.0)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server"), LIMITS) as served:
        yield served


def test_too_many_invokes_are_refused_at_once_and_status_stays_fast(hosted, x):
    # Each invoke is a node of the request (wire format 2), so a request cannot claim invokes it does not carry.
    data = attack(x)
    invoke = data["graphs"][0]["nodes"][-1]
    data["graphs"][0]["nodes"] += [dict(invoke, target=i) for i in range(1, 17)]
    started = time.monotonic()
    refused(post(hosted, data), 413, "17 invokes", "Limits.max_invokes")
    assert time.monotonic() - started < 5
    started = time.monotonic()
    assert httpx.get(f"{hosted.url}/status").status_code == 200 and time.monotonic() - started < 2


def test_a_long_range_is_refused_before_it_runs(hosted, x):
    refused(post(hosted, session(node("call_function", "builtins.range", 10**12))), 413, "Limits.max_loop_iterations")


@pytest.mark.parametrize("target, args", [("torch.zeros", [10**10]), ("torch.ones", [2**15, 2**15]),
                                          ("torch.arange", [10**9]), ("torch.empty", [1, 2**21])])
def test_a_huge_tensor_is_refused_before_it_is_allocated(hosted, x, target, args):
    ended_with(hosted, session(node("call_function", target, *args)), "Limits.max_tensor_elements")


def test_a_broadcast_or_repeat_that_explodes_is_refused(hosted, x):
    column = node("call_function", "torch.ones", 2**12, 1)
    row = node("call_function", "torch.ones", 1, 2**12)
    ended_with(hosted, session(column, row, node("call_function", "operator.add", ref(0), ref(1))),
               "'add' would need 16,777,216 elements")
    ended_with(hosted, session(column, node("call_method", "repeat", ref(0), 1, 2**12)), "'repeat'")


def test_one_long_c_call_is_refused_by_its_size(hosted, x):
    square = node("call_function", "torch.ones", 1024, 1024)
    ended_with(hosted, session(square, node("call_function", "torch.matmul", ref(0), ref(0))), "Limits.max_products")
    refused(post(hosted, session(square, node("call_function", "torch.matrix_power", ref(0), 10**9))), 400,
            "'torch.matrix_power' is not an allowed function")


def test_a_job_that_logs_too_much_ends_with_error(hosted, x):
    loop = {"op": "iter", "target": 1, "args": {"$tuple": [ref(0)]}, "kwargs": {"$dict": []}, "deps": [0],
            "invoke": None, "saved": False, "where": None}
    body = graph(0, "loop", [node("item", None), node("log", None, ref(0, graph=1))], owner=[0, 1])
    data = session(node("call_function", "builtins.range", 500), loop)
    data["graphs"].append(body)
    ended_with(hosted, data, "more than 20 lines", "Limits.max_log_lines")


def test_a_big_tolist_is_refused(hosted, x):
    ended_with(hosted, session(node("call_function", "torch.zeros", 2**13), node("call_method", "tolist", ref(0))),
               "Limits.max_list_elements")


def test_undownloaded_results_are_capped_per_key(hosted, x):
    big = session(node("call_function", "torch.zeros", 2**12, saved=True))  # about 22 KB of result each
    kept = [post(hosted, big).json()["job_id"] for _ in range(2)]
    assert all(final(hosted, job)["status"] == "COMPLETED" for job in kept)
    ended_with(hosted, big, "not downloaded yet", "Limits.max_held_bytes")
    for job in kept:  # once downloaded, they no longer count
        assert httpx.get(f"{hosted.url}/jobs/{job}/result", headers={"X-API-Key": hosted.token}).status_code == 200
    assert final(hosted, post(hosted, big).json()["job_id"])["status"] == "COMPLETED"


def test_an_exit_of_the_wrong_scope_still_ends_the_job(hosted, x):
    ended_with(hosted, session(node("exit", "loop")), "Exit")
    refused(post(hosted, session(node("exit", "everything"))), 400, "unknown scope")


def test_deep_json_and_bad_values_are_4xx(hosted, x):
    deep = b'{"a": ' * 500 + b"1" + b"}" * 500
    refused(post(hosted, deep), 413, "nests deeper")
    refused(post(hosted, attack(x, node("call_function", "torch.zeros", 2, device={"$device": "no-such:x"}))), 400,
            "bad device")
