"""Remote sessions on the tiny net: values across traces, logs, exits, loops, training — as they run locally."""
import logging

import pytest
import torch
from torch.utils.data import DataLoader

import nnglass


def both(run):
    """run(remote) locally, then on the server."""
    return run(False), run(True)


def test_values_cross_traces_without_save(tiny, x):
    y = x * 2

    def run(remote):
        with tiny.session(remote=remote):
            with tiny.trace(x):
                hidden = tiny.layer1.output[:, :]
                first = tiny.output.argmax(dim=-1).save()
            with tiny.trace(y):
                tiny.layer1.output[:] = hidden
                second = tiny.output.save()
        with pytest.raises(ValueError):
            hidden.value  # not saved: gone after the session, here and there
        return first.value, second.value

    local, remote = both(run)
    assert all(torch.equal(a, b) for a, b in zip(local, remote))


def test_session_log_and_exit_send_log_lines(tiny, caplog, capsys):
    def run(remote):
        with tiny.session(remote=remote) as session:
            session.log("-- Early Stop --")
            session.exit()
            session.log("never printed")
        return capsys.readouterr().out

    with caplog.at_level(logging.INFO, logger="nnglass.remote"):
        local, remote = both(run)
    assert local == remote == "-- Early Stop --\n"
    statuses = [r.getMessage().split(" - ", 1)[1] for r in caplog.records if r.name == "nnglass.remote"]
    assert statuses[2:] == ["RUNNING: Your job has started running.", "COMPLETED: Your job has been completed."]


def test_loop_with_cond_and_exit(tiny, capsys):
    def run(remote):
        with tiny.session(remote=remote) as session:
            with session.iter([0, 1, 2, 3], return_context=True) as (item, iterator):
                iterator.log(item)
                with iterator.cond(item == 2):
                    iterator.exit()
        return capsys.readouterr().out

    assert both(run) == ("0\n1\n2\n",) * 2


def test_nested_loops_over_a_traceable_list(tiny):
    def run(remote):
        with tiny.session(remote=remote) as session:
            li = nnglass.list()
            [li.append([num]) for num in range(0, 3)]
            li2 = nnglass.list().save()
            with session.iter(li) as item:
                with session.iter(item) as item_2:
                    li2.append(item_2)
        return li2.value

    assert both(run) == ([0, 1, 2], [0, 1, 2])


def test_loop_of_traces(tiny, x):
    inputs = [x * i for i in range(3)]

    def run(remote):
        with tiny.session(remote=remote) as session:
            outs = nnglass.list().save()
            with session.iter(inputs) as item:
                with tiny.trace(item):
                    outs.append(tiny.output)
        return outs.value

    local, remote = both(run)
    assert len(remote) == 3 and all(torch.equal(a, b) for a, b in zip(local, remote))


def test_training_loop_in_a_session(tiny, x):
    data = DataLoader([[x[0] * (i + 1), i % 2] for i in range(8)], batch_size=2)

    def run(remote):
        torch.manual_seed(0)
        with tiny.session(remote=remote) as session:
            weight = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=True).save()
            optimizer = torch.optim.AdamW([weight], lr=0.1)
            losses = nnglass.list().save()
            with session.iter(data, return_context=True) as (batch, iterator):
                with tiny.trace(batch[0]):
                    logits = tiny.output @ weight
                    loss = torch.nn.functional.cross_entropy(logits, batch[1])
                    loss.backward()
                    losses.append(loss.item())
                optimizer.step()
                optimizer.zero_grad()
                iterator.log(weight)
        return weight.value, losses.value

    (w1, l1), (w2, l2) = both(run)
    assert isinstance(w2, torch.nn.Parameter) and torch.equal(w1, w2)
    assert l1 == l2 and len(l2) == 4 and l2[-1] < l2[0]
