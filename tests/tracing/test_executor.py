"""Execution errors point at the user's line; conditions skip what they guard."""
import pytest
import torch

from nnglass import NNsight


def test_error_names_user_line_and_chains_original(tiny, x):
    with pytest.raises(RuntimeError) as info:
        with tiny.trace(x):
            tiny.layer1.output.view(3, 3).save()
    message = str(info.value)
    assert "test_executor.py:" in message and "tiny.layer1.output.view(3, 3).save()" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "shape '[3, 3]' is invalid" in str(info.value.__cause__)


def test_error_of_a_type_that_takes_no_message_still_locates(tiny, x):
    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)

    def boom(_):
        raise Odd(1, 2)

    import nnglass
    with pytest.raises(nnglass.ExecutionError, match="nnglass.apply"):
        with tiny.trace(x):
            nnglass.apply(boom, tiny.layer1.output)


def test_false_condition_skips_edits_and_leaves_values_unset(tiny, net, x):
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() > 1e9):
            tiny.layer1.output[:] = 0
            inside = tiny.layer1.output.clone().save()
        out = tiny.output.save()
    assert torch.equal(out.value, net(x))
    with pytest.raises(ValueError):
        inside.value


def test_true_proxy_condition_applies_edit(tiny, net, x):
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() < 1e9):
            tiny.layer1.output[:] = 0
        out = tiny.output.save()
    assert torch.equal(out.value, net.layer2(torch.zeros(1, 10)))


def test_stop_before_anything_skips_the_forward(x):
    calls = []
    net = torch.nn.Linear(5, 2)
    net.register_forward_hook(lambda *a: calls.append(1))
    model = NNsight(net)
    with model.trace(x) as tracer:
        tracer.stop()
    assert calls == []


def test_calls_with_one_proxy_and_keywords_keep_the_keywords(tiny, net, x):
    with tiny.trace(x):
        hidden = tiny.layer1.output
        top = torch.argmax(hidden, dim=-1).save()
        total = hidden.sum(dim=0, keepdim=True).save()
        scaled = torch.mul(hidden, 2.0).save()
    expected = net.layer1(x)
    assert torch.equal(top.value, torch.argmax(expected, dim=-1))
    assert torch.equal(total.value, expected.sum(dim=0, keepdim=True))
    assert torch.equal(scaled.value, expected * 2.0)
