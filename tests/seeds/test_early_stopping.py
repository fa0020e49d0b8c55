"""The early-stopping pages (seeds 000 and 001) on the tiny network, layer1/layer2 for h[k]."""
import pytest
import torch

from nnglass import NNsight


class Counting(torch.nn.Module):
    """Wraps a module and counts its calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def counting(net: torch.nn.Sequential) -> torch.nn.Sequential:
    return torch.nn.Sequential(*(Counting(m) for m in net))


def test_tracer_stop_after_layer(net, x):  # seed 000 cell 14
    model = NNsight(counting(net))
    with model.trace(x) as tracer:
        hs = model[0].output.save()
        tracer.stop()
    assert torch.equal(hs.value, net.layer1(x))
    assert [m.calls for m in model._model] == [1, 0]


def test_nodes_after_stop_never_run(net, x):  # seed 000 cell 15
    model = NNsight(counting(net))
    with model.trace(x) as tracer:
        model[0].output
        tracer.stop()
        hs_1 = model[1].output.save()
    assert [m.calls for m in model._model] == [1, 0]
    with pytest.raises(ValueError, match="^Accessing value before it's been set.$"):
        hs_1.value


def test_stop_saves_time(x):  # seed 000 cell 16: later modules really do not run
    deep = torch.nn.Sequential(*(Counting(torch.nn.Linear(5, 5)) for _ in range(20)))
    model = NNsight(deep)
    with model.trace(x) as tracer:
        model[4].output.save()
        tracer.stop()
    assert [m.calls for m in deep] == [1] * 5 + [0] * 15


def test_envoy_stop_first_layer(net, x):  # seed 001 cell 1
    model = NNsight(counting(net))
    with model.trace(x):
        l1_out = model[0].output.save()
        model[0].output.stop()
    assert torch.equal(l1_out.value, net.layer1(x))
    assert [m.calls for m in model._model] == [1, 0]


def test_later_layer_unset_after_envoy_stop(net, x):  # seed 001 cell 2
    model = NNsight(counting(net))
    with model.trace(x):
        l2_out = model[1].output.save()
        model[0].output.stop()
    with pytest.raises(ValueError, match="^Accessing value before it's been set.$"):
        print("L2 - Output: ", l2_out)
