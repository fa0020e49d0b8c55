"""Runs that do not block (`blocking=False`): the job handle, its statuses and result, re-attaching by id."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nnglass import RemoteError, remote
from nnglass.remote.schema import JobStatus

STEPS = [JobStatus.RECEIVED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED]


def steps(job) -> list[JobStatus]:
    """The job's statuses other than LOG lines."""
    return [s.status for s in job.statuses if s.status is not JobStatus.LOG]


def test_a_trace_returns_before_its_job_runs_and_fills_its_values_later(hosted, tiny, net, x):
    with hosted.app.state.host.hosting.locks["tiny"]:  # the worker waits for the model meanwhile
        with tiny.trace(x, remote=True, blocking=False) as tracer:
            hidden = tiny.layer1.output.save()
            out = tiny.output.save()
        job = tracer.job
        assert job.status().status is JobStatus.QUEUED
        with pytest.raises(ValueError, match=rf"remote job {job.id}.*call tracer.job.result\(\)"):
            out.value
        with pytest.raises(TimeoutError, match="has not ended"):
            job.wait(timeout=0.3)
    values = job.result()
    assert steps(job) == STEPS and job.status().status is JobStatus.COMPLETED
    assert set(values) == {"hidden", "out"}
    assert torch.equal(values["out"], net(x)) and torch.equal(values["hidden"], net.layer1(x))
    assert torch.equal(out.value, net(x)) and torch.equal(hidden.value, net.layer1(x))
    assert job.result() is values  # kept: the server hands a result out once


def test_a_session_with_a_compiled_body_sends_its_variable_names(hosted, tiny, net, x, capsys):
    with tiny.session(remote=True, blocking=False) as session:
        with tiny.trace(x):
            first = tiny.layer1.output.save()
        with tiny.trace(x * 2):
            second = tiny.output.save()
        both = {"first": first, "pair": [first, second]}
        print("sum", second.sum())  # a print of a proxy: the block runs compiled
    with pytest.raises(ValueError, match=r"call session.job.result\(\)"):
        second.value
    values = session.job.result()
    assert set(values) == {"first", "second", "both"}
    assert torch.equal(values["both"]["pair"][1], net(x * 2)) and torch.equal(values["first"], net.layer1(x))
    assert torch.equal(second.value, net(x * 2))
    assert capsys.readouterr().out.startswith("sum tensor(")


def test_a_job_is_reattached_by_id_in_another_process(hosted, tiny, net, x, tmp_path):
    with tiny.trace(x, remote=True, blocking=False) as tracer:
        out = tiny.output.save()
    script = ("import sys, torch; from nnglass import remote; job = remote.job(sys.argv[1]); "
              "values = job.result(); print(job.status().status.value); torch.save(values, sys.argv[2])")
    finished = subprocess.run([sys.executable, "-c", script, tracer.job.id, str(tmp_path / "values.pt")],
                              capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines()[-1] == "COMPLETED"
    assert torch.equal(torch.load(tmp_path / "values.pt")["out"], net(x))
    with pytest.raises(RemoteError, match=r"\(410\).*downloaded already"):  # handed out once: to the other process
        tracer.job.result()
    with pytest.raises(ValueError, match="tracer.job.result"):
        out.value


def test_errors_of_unknown_and_failing_jobs_then_a_good_run(hosted, tiny, net, x):
    lost = remote.job("no-such-job")
    for ask in (lost.status, lost.wait, lost.result):
        with pytest.raises(RemoteError, match="no job 'no-such-job' for this key"):
            ask()
    with tiny.trace(x, remote=True, blocking=False) as tracer:
        tiny.layer1.output[0, 99].save()  # layer1 has 10 columns: fails on the server
    with pytest.raises(RemoteError, match="index 99 is out of bounds") as failed:
        tracer.job.result()
    assert failed.value.job_id == tracer.job.id and tracer.job.status().status is JobStatus.ERROR
    assert steps(tracer.job)[-1] is JobStatus.ERROR
    with tiny.trace(x, remote=True):
        out = tiny.output.save()
    assert torch.equal(out, net(x))
