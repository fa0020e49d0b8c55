"""Batching: queued jobs of several keys share one forward, and each gets exactly what it gets alone.

The jobs are real requests (recorded traces, serialized as the client sends them) submitted to a real
Host, whose worker runs them in forked processes; while the test holds the model's lock they pile up in
the queue, so the worker takes them as one group. Each job's result must equal, bit for bit, that of
the same request run alone (decoded and run here, as the server runs a job).
"""
from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnglass
from nnglass import LanguageModel, Session
from nnglass.intervention.trace import Trace as Tracer
from nnglass.remote import serialize
from nnglass.remote.schema import JobStatus
from nnglass.remote.values import Decoder
from nnglass.server import Limits
from nnglass.server.batching import fillers, fits, group_key, merge, shares_forward, split
from nnglass.server.host import Host
from nnglass.server.hosting import InProcess
from nnglass.server.numerics import gemm_batch_invariant
from tests.conftest import tiny_llama
from tests.server.rounding import EXACT, NOT_EXACT, same
from tests.server.serving import tiny_model

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park"]  # one token each


@pytest.fixture(scope="module")
def host(tok):
    llama = LanguageModel(tiny_llama(tok, 2), tokenizer=tok)
    llama._remote_name = "llama"
    served = Host(InProcess({"tiny": tiny_model(), "llama": llama}, Limits()))
    yield served
    served.close()


# -- requests ------------------------------------------------------------------------------------------
def recorded(model, name: str, invokes: list, program, method: str = "forward", **call) -> dict:
    """The request of a trace with one invoke per input, each running `program(model)` (as the client sends it)."""
    tracer = Tracer(model, (), {}, run=False, method=method, call_kwargs=call)
    with tracer:
        for inputs in invokes:
            with tracer.invoke(inputs):
                program(model)
    return {**json.loads(json.dumps(serialize.request(tracer))), "model": name}


def saved_values(result: dict) -> dict:
    """A job's result as {(graph, node): value}."""
    decode = Decoder(result["tensors"])
    return {(g, i): decode(value) for g, i, value in result["values"]}


def alone(host: Host, data: dict) -> dict:
    """What the request gives run by itself, decoded and run as a worker runs it."""
    job = serialize.Job(data, host.models.__getitem__)
    job.run()
    return saved_values(json.loads(json.dumps(job.encoded_results())))


@contextlib.contextmanager
def queued(host: Host, model: str):
    """Hold the model while jobs are submitted, so that they wait in its queue together."""
    worker = host.workers[model]
    with host.hosting.locks[model]:
        yield worker


def submitted(host: Host, model: str, requests: list[dict]) -> tuple[list, int]:
    """Submit every request (owner i + 1 for the i-th) at once; the finished records and the runs they took."""
    worker = host.workers[model]
    runs = worker.runs
    with queued(host, model):
        ids = [host.submit(json.dumps(data).encode(), owner).job_id for owner, data in enumerate(requests, 1)]
    records = [host.jobs.find(job_id, owner) for owner, job_id in enumerate(ids, 1)]
    deadline = time.monotonic() + 60
    while any(record.ended is None for record in records):
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.01)
    return records, worker.runs - runs


def result_of(record) -> dict:
    assert record.statuses[-1].status is JobStatus.COMPLETED, record.statuses[-1]
    return saved_values(json.loads(record.result))


def assert_identical(batched: dict, single: dict) -> None:
    assert batched.keys() == single.keys()
    for place, value in single.items():
        assert same(batched[place], value), place


# -- the property ----------------------------------------------------------------------------------------
ACTION = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 1)),
    st.tuples(st.just("edit"), st.integers(0, 1), st.floats(-2, 2, allow_nan=False, width=32)),
    st.tuples(st.just("swap"), st.integers(0, 1), st.floats(0.5, 2, allow_nan=False, width=32)),
    st.tuples(st.just("sum"), st.integers(0, 1), st.integers(0, 1)),
)
PROGRAM = st.lists(ACTION, min_size=1, max_size=4)
JOB = st.tuples(st.lists(st.integers(1, 3), min_size=1, max_size=2), PROGRAM)  # rows of each invoke, program


def run_program(layers, output, program) -> None:
    """Reads, in-place edits, swaps and arithmetic across layers, each value saved."""
    for action in program:
        kind, layer = action[0], layers[action[1]]
        if kind == "read":
            layer.output.save()
        elif kind == "edit":
            layer.output[:, -1] = action[2]
        elif kind == "swap":
            layer.output = layer.output * action[2]
        else:
            (layer.output.mean(-1) + layers[action[2]].output.mean(-1) * 2).save()
    output().save()


def tiny_job(sizes: list[int], program, seed: int) -> dict:
    model = tiny_model()
    inputs = [torch.rand(size, 5, generator=torch.Generator().manual_seed(seed * 7 + i)) for i, size in enumerate(sizes)]
    return recorded(model, "tiny", inputs, lambda m: run_program([m.layer1, m.layer2], lambda: m.output, program))


def prompt(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed + 3 * word) % 10] for word in range(words))


def llama_job(host: Host, sizes: list[int], program, seed: int) -> dict:
    """Prompts of two or three tokens; each job's first has three, so every job is padded to three."""
    model = host.models["llama"]
    prompts = [[prompt(seed + i + row, 3 if i == row == 0 else 2 + (seed + i + row) % 2) for row in range(size)]
               for i, size in enumerate(sizes)]
    return recorded(model, "llama", prompts, lambda m: run_program(
        [m.model.layers[0], m.model.layers[1]], lambda: m.lm_head.output, program))


PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("model", ["tiny", "llama"])
@PROPERTY
@given(jobs=st.lists(JOB, min_size=2, max_size=4))
def test_jobs_sharing_a_forward_get_what_they_get_alone(host, model, jobs):
    requests = [tiny_job(sizes, program, seed) if model == "tiny" else llama_job(host, sizes, program, seed)
                for seed, (sizes, program) in enumerate(jobs)]
    records, runs = submitted(host, model, requests)
    assert runs == 1  # one forward for them all (with filler rows where their rows would not fit)
    for record, data in zip(records, requests):
        assert_identical(result_of(record), alone(host, data))


@pytest.mark.skipif(not EXACT, reason=NOT_EXACT)
def test_the_test_process_computes_batch_invariant_products():
    assert gemm_batch_invariant()  # tests/conftest.py set MKL_CBWR before torch's first matrix product


# -- which jobs share a forward ---------------------------------------------------------------------------
def read_layer1(model) -> None:
    model.layer1.output.save()


def key(host: Host, data: dict):
    return group_key(serialize.Job(data, host.models.__getitem__)).key


def test_compatible_jobs_have_one_key(host):
    x = torch.rand(2, 5)
    first, second = (recorded(tiny_model(), "tiny", [x], read_layer1), recorded(tiny_model(), "tiny", [x * 2], read_layer1))
    assert key(host, first) is not None and key(host, first) == key(host, second)
    assert key(host, recorded(tiny_model(), "tiny", [torch.rand(1, 5)], read_layer1)) == key(host, first)


@pytest.mark.parametrize("program", ["stop", "grad", "log", "random", "parameter", "skip"])
def test_jobs_with_effects_beyond_their_rows_run_alone(host, program):
    def act(model):
        hidden = model.layer1.output
        if program == "stop":
            hidden.stop()
        elif program == "grad":
            hidden.grad.save()
            with model.output.sum().backward():
                pass
        elif program == "log":
            nnglass.log(hidden)
        elif program == "random":
            (hidden + torch.rand(1)).save()
        elif program == "parameter":
            model.layer2.weight[:] = 0
        else:
            model.layer1.skip(hidden)
    model = tiny_model()
    model._model.requires_grad_(program == "grad")
    assert not shares_forward(recorded(model, "tiny", [torch.rand(1, 5)], act))


class Unrun:
    """A backend that runs nothing: the session is only recorded."""

    def run(self, recorder) -> None:
        pass


def test_sessions_generation_and_whole_batch_reads_run_alone(host):
    model = tiny_model()
    with Session(model, backend=Unrun()) as session:
        with model.trace(torch.rand(1, 5)):
            read_layer1(model)
    assert not shares_forward({**serialize.request(session), "model": "tiny"})
    tracer = Tracer(model, (), {}, run=False)
    with tracer:
        with tracer.invoke(torch.rand(1, 5)):
            read_layer1(model)
        model.layer2.output.save()  # outside the invokes: the whole batch
    assert not shares_forward({**serialize.request(tracer), "model": "tiny"})
    llama = host.models["llama"]
    generated = recorded(llama, "llama", ["the cat sat"], lambda m: m.lm_head.output.save(), "generate",
                         max_new_tokens=2)
    assert not shares_forward(generated)


def test_greedy_generation_of_a_fixed_length_shares_a_forward(host):
    llama = host.models["llama"]

    def read(model) -> None:
        model.model.layers[1].output[:, -1] = 0.5
        model.lm_head.output.save()
        model.generator.output.save()

    requests = [recorded(llama, "llama", [prompt(seed, 3)], read, "generate", max_new_tokens=3, min_new_tokens=3)
                for seed in range(3)]
    shorter = recorded(llama, "llama", [prompt(0, 3)], read, "generate", max_new_tokens=2, min_new_tokens=2)
    assert key(host, shorter) is not None and key(host, shorter) != key(host, requests[0])
    records, runs = submitted(host, "llama", requests)
    assert runs == 1
    for record, data in zip(records, requests):
        assert_identical(result_of(record), alone(host, data))


def test_different_lengths_or_run_keywords_do_not_share_a_forward(host):
    llama = host.models["llama"]
    save = lambda m: m.lm_head.output.save()  # noqa: E731
    three, four = recorded(llama, "llama", ["the cat sat"], save), recorded(llama, "llama", ["the cat sat on"], save)
    assert key(host, three) != key(host, four) and key(host, three) == key(host, recorded(llama, "llama", ["a dog ran"], save))
    keywords = recorded(llama, "llama", ["a dog ran"], save, output_attentions=True)
    assert key(host, keywords) is not None and key(host, keywords) != key(host, three)
    records, runs = submitted(host, "llama", [three, four])
    assert runs == 2
    for record, data in zip(records, [three, four]):
        assert_identical(result_of(record), alone(host, data))


# -- merging on the wire ---------------------------------------------------------------------------------
def looping(model) -> None:
    total = model.layer1.output.sum() * 0
    for step in range(2):
        total = total + model.layer1.output[:, step]
    total.save()


def test_merge_renumbers_loops_and_split_gives_each_job_its_own_values(host):
    requests = [recorded(tiny_model(), "tiny", [torch.rand(1, 5), torch.rand(2, 5)], looping) for _ in range(3)]
    merged, parts = merge(requests)
    assert len(merged["graphs"]) == 1 + sum(len(data["graphs"]) - 1 for data in requests)
    assert [n["target"] for n in merged["graphs"][0]["nodes"] if n["op"] == "invoke"] == list(range(6))
    job = serialize.Job(merged, host.models.__getitem__)
    job.run()
    for own, data in zip(split(json.loads(json.dumps(job.encoded_results())), parts), requests):
        assert_identical(saved_values(own), alone(host, data))


# -- failures --------------------------------------------------------------------------------------------
def out_of_range(model) -> None:
    model.layer1.output[:, 99].save()


def test_a_failing_job_fails_alone_and_the_others_get_their_results(host):
    x = torch.rand(1, 5)
    good = [recorded(tiny_model(), "tiny", [x * k], read_layer1) for k in (1, 2)]
    bad = recorded(tiny_model(), "tiny", [x], out_of_range)
    assert key(host, bad) == key(host, good[0])
    records, runs = submitted(host, "tiny", [good[0], bad, good[1]])
    assert runs == 4  # the group, then each job alone
    assert records[1].statuses[-1].status is JobStatus.ERROR and "out of bounds" in records[1].statuses[-1].description
    for record, data in zip([records[0], records[2]], good):
        assert_identical(result_of(record), alone(host, data))
    records, runs = submitted(host, "tiny", [*good, good[0]])  # the next ones share their forward again (3 rows)
    assert runs == 1 and all(record.statuses[-1].status is JobStatus.COMPLETED for record in records)


def test_each_job_has_its_own_result_limits():
    big = Limits(max_result_bytes=1500)
    served = Host(InProcess({"tiny": tiny_model()}, big))
    try:
        small = recorded(tiny_model(), "tiny", [torch.rand(1, 5)], read_layer1)
        large = recorded(tiny_model(), "tiny", [torch.rand(30, 5)], read_layer1)
        records, runs = submitted(served, "tiny", [small, large])
        assert runs == 1
        assert records[0].statuses[-1].status is JobStatus.COMPLETED
        assert "Limits.max_result_bytes" in records[1].statuses[-1].description
    finally:
        served.close()


def test_a_group_past_the_tensor_limit_runs_job_by_job():
    # four jobs' inputs together make a [4, 5] batch, past the limit; one job's [1, 5] input is not concatenated
    served = Host(InProcess({"tiny": tiny_model()}, Limits(max_tensor_elements=15)))
    try:
        requests = [recorded(tiny_model(), "tiny", [torch.rand(1, 5) * k], read_layer1) for k in range(4)]
        records, runs = submitted(served, "tiny", requests)
        assert runs == 5
        for record, data in zip(records, requests):
            assert_identical(result_of(record), alone(served, data))
    finally:
        served.close()


def test_jobs_in_the_server_process_share_one_forward():
    model = tiny_model()
    served = Host(InProcess({"tiny": model}, Limits(isolate=False)))
    calls = []
    handle = model._model.register_forward_hook(lambda *_: calls.append(1))
    try:
        requests = [recorded(tiny_model(), "tiny", [torch.rand(1, 5) * k], read_layer1) for k in range(4)]
        records, runs = submitted(served, "tiny", requests)
        assert len(calls) == 1 and runs == 1
        for record, data in zip(records, requests):
            assert_identical(result_of(record), alone(served, data))
    finally:
        handle.remove()
        served.close()


# -- values that are not one job's rows ---------------------------------------------------------------
class Tabled(torch.nn.Module):
    """A layer that also returns a table of its own: one tensor for the whole batch, not rows of it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(5, 5)
        self.table = torch.nn.Parameter(torch.rand(3, 5), requires_grad=False)

    def forward(self, x: torch.Tensor):
        return self.proj(x), self.table * 1


class TableNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = Tabled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, table = self.layer(x)
        return hidden @ table.T


@pytest.fixture(scope="module")
def tabled():
    model = nnglass.NNsight(TableNet())
    model._remote_name = "tabled"
    served = Host(InProcess({"tabled": model}, Limits()))
    yield served
    served.close()


def read_table(m) -> None:
    m.layer.output[1].save()
    m.output.save()


def zero_table(m) -> None:
    m.layer.output = (m.layer.output[0], m.layer.output[1] * 0)
    m.output.save()


def save_output(m) -> None:
    m.output.save()


@pytest.mark.parametrize("program", [read_table, zero_table])
def test_a_job_using_a_value_shared_by_the_batch_runs_alone(tabled, program):
    model = tabled.models["tabled"]
    user = recorded(model, "tabled", [torch.rand(2, 5)], program)
    others = [recorded(model, "tabled", [torch.rand(4, 5)], save_output) for _ in range(2)]  # 10 rows: not a size of the weights
    records, runs = submitted(tabled, "tabled", [others[0], user, others[1]])
    assert runs == 4  # the shared forward withheld the table from the job (or refused its swap): each alone
    for record, data in zip(records, [others[0], user, others[1]]):
        assert_identical(result_of(record), alone(tabled, data))
    records, runs = submitted(tabled, "tabled", others)
    assert runs == 1  # jobs that keep to their rows still share


def test_a_shared_batch_never_has_as_many_rows_as_the_prompts_have_tokens(host):
    jobs = [recorded(host.models["llama"], "llama", [prompt(seed, 3)], read_layer1_llama) for seed in range(3)]
    grouping = group_key(serialize.Job(jobs[0], host.models.__getitem__))
    assert not fits(3, grouping.sizes) and fillers(3, grouping) == 2  # 3 tokens, 4 from a weight: 5 rows
    records, runs = submitted(host, "llama", jobs)
    assert runs == 1  # one forward of five rows: the three jobs' and two filler copies of the first's
    for record, data in zip(records, jobs):
        assert_identical(result_of(record), alone(host, data))


def read_layer1_llama(m) -> None:
    m.model.layers[0].output.save()
    m.lm_head.output.save()


def test_a_burst_of_jobs_longer_than_the_window_shares_one_forward():
    served = Host(InProcess({"tiny": tiny_model()}, Limits(batch_window_s=0.15)))
    try:
        jobs = [recorded(tiny_model(), "tiny", [torch.rand(1, 5)], read_layer1) for _ in range(5)]
        worker, ids = served.workers["tiny"], []
        for owner, data in enumerate(jobs, 1):  # 40 ms apart: 160 ms in all, past one window
            ids.append(served.submit(json.dumps(data).encode(), owner).job_id)
            time.sleep(0.04)
        records = [served.jobs.find(job_id, owner) for owner, job_id in enumerate(ids, 1)]
        while any(record.ended is None for record in records):
            time.sleep(0.01)
        assert worker.runs == 1  # each job that joined kept the group open a window more
        for record, data in zip(records, jobs):
            assert_identical(result_of(record), alone(served, data))
    finally:
        served.close()
