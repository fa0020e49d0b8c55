"""Remote runs as 0.4 notebooks write them: LOG lines inside session.iter, CONFIG.APP.REMOTE_LOGGING."""
import logging

import pytest

from nnglass import CONFIG


def statuses(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage().split(" - ", 1)[1] for r in caplog.records if r.name == "nnglass.remote" and r.levelno >= level]


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_a_log_inside_session_iter_arrives_once_per_iteration(tiny, x, remote, caplog, capsys):
    with caplog.at_level(logging.DEBUG, logger="nnglass.remote"):
        with tiny.session(remote=remote) as session:
            with session.iter([0, 1, 2], return_context=True) as (item, iterator):
                session.log("item", item)
                iterator.log("again", item)
                with tiny.trace(x) as tracer:
                    tracer.log("trace", item)
    lines = [f"{kind} {i}" for i in range(3) for kind in ("item", "again", "trace")]
    assert capsys.readouterr().out == "".join(line + "\n" for line in lines)
    if remote:  # printed once (as locally); the status line only at DEBUG, so a notebook shows it once
        assert [s for s in statuses(caplog, logging.DEBUG) if s.startswith("LOG")] == [f"LOG: {line}" for line in lines]
        assert not [s for s in statuses(caplog) if s.startswith("LOG")]


def test_remote_logging_off_keeps_only_the_log_text(tiny, x, caplog, capsys):
    CONFIG.APP.REMOTE_LOGGING = False
    try:
        with caplog.at_level(logging.INFO, logger="nnglass.remote"):
            with tiny.session(remote=True) as session:
                session.log("hello")
    finally:
        CONFIG.APP.REMOTE_LOGGING = True
    assert capsys.readouterr().out == "hello\n" and statuses(caplog) == []


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_parameters_read_and_edited_remotely_as_locally(tiny, net, x, remote):
    import torch
    with tiny.trace(x, remote=remote):
        weight = tiny.layer2.weight.save()
        tiny.layer1.bias[:] = 0
        out = tiny.output.save()
    assert torch.equal(weight, net.layer2.weight)
    assert torch.allclose(out, net.layer2(torch.nn.functional.linear(x, net.layer1.weight)))
    with tiny.trace(x, remote=remote):  # the edit was undone (on the server too)
        again = tiny.output.save()
    assert torch.allclose(again, net(x))
