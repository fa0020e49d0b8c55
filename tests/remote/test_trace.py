"""Remote traces on the tiny net: the same code with remote=True gives what it gives locally."""
import logging

import pytest
import torch

import nnglass
from nnglass.remote.client import RemoteError


def both(run):
    """run(remote) locally, then on the server."""
    return run(False), run(True)


def test_saved_values_and_in_place_edit_match_local(tiny, x):
    def run(remote):
        with tiny.trace(x, remote=remote):
            hidden = tiny.layer1.output.clone().save()
            tiny.layer1.output[:, 0] = 0
            out = tiny.output.save()
            top = torch.argmax(out, dim=-1).save()
        return hidden.value, out.value, top.value

    local, remote = both(run)
    for a, b in zip(local, remote):
        assert torch.equal(a, b)


def test_results_moved_to_the_cpu_as_nnsights_remote_docs_advise(tiny, x):
    def run(remote):
        with tiny.trace(x, remote=remote):
            hidden = tiny.layer1.output.detach().cpu().save()
            out = tiny.output.to("cpu").save()
        return hidden.value, out.value

    local, remote = both(run)
    assert all(torch.equal(a, b) for a, b in zip(local, remote))


def test_status_lines_are_logged_and_the_result_download_shows_progress(tiny, x, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="nnglass.remote"):
        with tiny.trace(x, remote=True):
            out = tiny.output.save()
    lines = [r.getMessage() for r in caplog.records if r.name == "nnglass.remote"]
    job = lines[0].split(" - ")[0]
    assert [line.split(" - ")[1].split(":")[0] for line in lines] == ["RECEIVED", "QUEUED", "RUNNING", "COMPLETED"]
    assert all(line.startswith(f"{job} - ") for line in lines)
    assert "Downloading result" in capsys.readouterr().err
    assert out.value.shape == (1, 2)


def test_two_invokes_swap_and_log_match_local(tiny, x, capsys):
    y = x * 3

    def run(remote):
        with tiny.trace(remote=remote) as tracer:
            with tracer.invoke(x):
                hidden = tiny.layer1.output[:]
                first = tiny.output.save()
            with tracer.invoke(y):
                tiny.layer1.output = hidden * 2
                second = tiny.output.save()
                tracer.log("second", second.sum())
        return first.value, second.value, capsys.readouterr().out

    (a1, b1, out1), (a2, b2, out2) = both(run)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert out1 == out2 and out1.startswith("second tensor(")


def test_gradients_edits_and_stop_match_local(tiny, x):
    def run(remote):
        with tiny.trace(x, remote=remote):
            tiny.layer1.output.requires_grad = True
            tiny.layer2.output.grad = tiny.layer2.output.grad * 2
            grad = tiny.layer1.output.grad.save()
            tiny.output.sum().backward()
        with tiny.trace(x, remote=remote):
            first = tiny.layer1.output.save()
            later = tiny.layer2.output.save()
            tiny.layer1.output.stop()
        with pytest.raises(ValueError, match="before it's been set"):
            later.value
        return grad.value, first.value

    local, remote = both(run)
    assert all(torch.equal(a, b) for a, b in zip(local, remote))


def test_trace_false_returns_the_output(tiny, net, x):
    assert torch.equal(tiny.trace(x, trace=False, remote=True), net(x))


def test_a_failing_operation_raises_with_the_users_line(tiny, x):
    def run(remote):
        with tiny.trace(x, remote=remote):
            tiny.layer1.output[:, 100].save()

    with pytest.raises(IndexError) as local:
        run(False)
    with pytest.raises(RemoteError) as remote:
        run(True)
    error = remote.value
    assert error.error == "IndexError"
    assert error.where == f"{__file__}:{run.__code__.co_firstlineno + 2}"
    assert str(local.value) in str(error)  # the same message, naming the same user line
    assert str(error).startswith(f"{error.job_id} - ERROR: ")


def test_a_function_outside_the_allow_list_is_refused_before_sending(tiny, x):
    def user_function(value):
        return value * 2

    with pytest.raises(ValueError, match="'.*user_function' is not allowed in a remote graph"):
        with tiny.trace(x, remote=True):
            nnglass.apply(user_function, tiny.layer1.output).save()


def test_an_unnamed_model_cannot_run_remotely(net, x, hosted):
    with pytest.raises(ValueError, match="no name a server could host it under"):
        with nnglass.NNsight(net).trace(x, remote=True):
            pass
