"""Sessions as nnsight 0.4 writes them: session(scan=, validate=), session.apply, nnsight.util.apply, session.cond."""
import pytest
import torch

import nnglass
from nnglass import Proxy, TraceError


def test_session_validate_checks_every_trace_inside_at_the_users_line(tiny, x):
    with pytest.raises(Exception, match="index 20 is out of bounds"):
        with tiny.session(validate=True):
            with tiny.trace(x):
                tiny.layer1.output[:, 20] = 0
    with tiny.session(validate=True, scan=True):
        with tiny.trace(x) as tracer:
            assert tiny.layer1.output.shape == (1, 10)
            out = tiny.output.save()
    assert torch.equal(out, tiny._model(x))


def test_session_apply_adds_a_call_to_the_graph(tiny, x):
    with tiny.session() as session:
        with tiny.trace(x):
            hidden = tiny.layer1.output
        total = session.apply(torch.sum, hidden).save()
    assert torch.allclose(total, tiny._model.layer1(x).sum())


def test_util_apply_maps_values_of_a_type_in_nested_data(tiny, x):
    with tiny.trace(x):
        found = {"a": [tiny.layer1.output.save()], "b": (tiny.output.save(), 3)}
    values = nnglass.util.apply(found, lambda proxy: proxy.value, Proxy)
    assert torch.equal(values["a"][0], tiny._model.layer1(x)) and values["b"][1] == 3
    assert type(values["b"][0]) is torch.Tensor
    data = [1, [2.0, "x"]]
    assert nnglass.util.apply(data, lambda v: v * 10, int, inplace=True) == [10, [2.0, "x"]]
    assert data == [10, [2.0, "x"]]


def test_session_cond_around_whole_traces(tiny, x):
    with tiny.session() as session:
        with tiny.trace(x):
            big = tiny.output.sum() > 1e9
        with session.cond(big):
            with tiny.trace(x):
                skipped = tiny.output.save()
        with session.cond(~big):
            with tiny.trace(x):
                ran = tiny.output.save()
    assert torch.equal(ran, tiny._model(x))
    with pytest.raises(ValueError, match="Accessing value before it's been set."):
        skipped.value


def test_session_cond_inside_session_iter(tiny, x):
    with tiny.session() as session:
        seen = nnglass.list().save()
        with session.iter([1, 2, 3, 4]) as item:
            with session.cond(item % 2 == 0):
                with tiny.trace(x * item):
                    seen.append(tiny.output.sum())
    expected = [tiny._model(x * i).sum() for i in (2, 4)]
    assert len(seen.value) == 2 and all(torch.allclose(a, b) for a, b in zip(seen.value, expected))
