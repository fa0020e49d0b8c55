"""Isolation (`Limits(isolate=True)`): jobs in forked processes, killed inside a long C call, memory-capped."""
import os
import signal
import time

import pytest
import torch

from nnglass.server import Limits
from nnglass.server.isolation import run_forked
from tests.server.attacks.craft import attack, ended_with, final, node, post, ref, session
from tests.server.serving import hosting, tiny_model

LIMITS = Limits(isolate=True, job_timeout_s=2.0, max_job_bytes=2**30, max_products=2**42)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server"), LIMITS) as served:
        yield served


def test_a_job_runs_in_a_child_and_its_result_comes_back(hosted, x):
    response = post(hosted, attack(x, node("call_method", "sum", ref(0), saved=True)))
    assert final(hosted, response.json()["job_id"])["status"] == "COMPLETED"


def test_one_long_c_call_is_killed_at_the_time_limit(hosted, x):
    big = node("call_function", "torch.ones", 8192, 8192)
    started = time.monotonic()
    last = ended_with(hosted, session(big, node("call_function", "torch.matmul", ref(0), ref(0))), "was killed")
    assert last["error"] == "TimeoutError" and time.monotonic() - started < 15


def test_memory_past_the_cap_ends_the_job_not_the_server(tmp_path, x):
    with hosting({"tiny": tiny_model()}, tmp_path, Limits(isolate=True, max_job_bytes=64 * 2**20)) as capped:
        quarter = node("call_function", "torch.ones", 2**26, saved=True)  # 256 MiB each, the cap is 64 MiB
        ended_with(capped, session(quarter, quarter, quarter), "allocate")
        response = post(capped, attack(x, node("call_method", "sum", ref(0), saved=True)))
        assert final(capped, response.json()["job_id"])["status"] == "COMPLETED"


def test_python_level_blowups_are_capped_too(hosted, x):
    last = ended_with(hosted, session(node("call_function", "operator.mul", [0], 10**10)))
    assert last["error"] == "MemoryError"
    ended_with(hosted, session(node("call_function", "operator.pow", 7, 10**10)), "was killed")


def test_a_crashing_child_is_reported_and_the_server_lives():
    why = run_forked(lambda send: os.kill(os.getpid(), signal.SIGSEGV), 10, 2**30, print)
    assert why == "crashed: its process died of SIGSEGV"
    messages = []
    assert run_forked(lambda send: send(["hello"]), 10, 2**30, messages.append) is None and messages == [["hello"]]


def test_a_child_computes_after_the_parent_used_several_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        square = torch.rand(1000, 1000)
        (square @ square).sum()  # the parent's OpenMP pool is up
        got = []
        assert run_forked(lambda send: send(float((square @ square).sum())), 30, 2**31, got.append) is None
        assert got == [pytest.approx(float((square @ square).sum()), rel=1e-4)]
    finally:
        torch.set_num_threads(threads)
