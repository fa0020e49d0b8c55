"""Parameters inside a trace are proxies (0.4): reads, .save(), in-place edits undone after the trace."""
from collections import OrderedDict

import pytest
import torch

from nnglass import LanguageModel, NNsight
from tests.conftest import tiny_llama


def test_a_parameter_read_is_a_proxy_and_can_be_saved(tiny, net, x):
    with tiny.trace(x):
        weight = tiny.layer1.weight.save()
        norm = tiny.layer2.bias.norm().save()
    assert torch.equal(weight, net.layer1.weight) and torch.allclose(norm, net.layer2.bias.norm())


def test_an_in_place_edit_applies_to_the_run_and_is_undone_after(tiny, net, x):
    before = net.layer1.weight.clone()
    with tiny.trace(x):
        tiny.layer1.weight[:, 0] = 0
        out = tiny.output.save()
    edited = net.layer1.weight.clone()
    edited[:, 0] = 0
    expected = net.layer2(torch.nn.functional.linear(x, edited, net.layer1.bias))
    assert torch.allclose(out, expected)
    assert torch.equal(net.layer1.weight, before)
    with tiny.trace(x):  # the next trace sees the original weight
        again = tiny.output.save()
    assert torch.equal(again, net(x))


def test_editing_a_parameter_that_requires_grad_is_not_a_leaf_error(x):
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))]))
    model = NNsight(net)
    before = net.layer2.weight.clone()
    with model.trace(x):
        model.layer2.weight *= 2
        out = model.output.save()
    assert torch.allclose(out, torch.nn.functional.linear(net.layer1(x), before * 2, net.layer2.bias))
    assert torch.equal(net.layer2.weight, before) and net.layer2.weight.requires_grad


def test_gradients_still_reach_parameters_read_in_a_trace(x):
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))]))
    model = NNsight(net)
    with model.trace(x):
        weight = model.layer2.weight.save()
        model.output.sum().backward()
    assert weight.value is net.layer2.weight and weight.grad is not None
    net.zero_grad()
    net(x).sum().backward()
    assert torch.equal(weight.grad, net.layer2.weight.grad)


@pytest.fixture(scope="module")
def checkpoint(smol_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_llama(smol_tokenizer, 2).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("dispatch", [False, True], ids=["meta-initialized", "dispatched"])
def test_parameters_of_a_language_model(checkpoint, dispatch):
    model = LanguageModel(str(checkpoint), dispatch=dispatch)
    with model.trace("Hello world"):
        weight = model.lm_head.weight.save()
        model.model.norm.weight[:] = 0
        logits = model.lm_head.output.save()
    assert model.dispatched and weight.device.type == "cpu"
    assert torch.equal(weight, model._model.lm_head.weight)
    assert torch.count_nonzero(logits) == 0  # the final norm scaled everything to zero
    assert torch.count_nonzero(model._model.model.norm.weight) > 0  # restored
    with model.trace("Hello world"):
        logits = model.lm_head.output.save()
    assert torch.count_nonzero(logits) > 0


def test_an_augmented_assignment_leaves_no_proxy_on_the_envoy(tiny, net, x):
    with tiny.trace(x):
        tiny.layer2.bias += 1
    assert "bias" not in vars(tiny.layer2)
    with tiny.trace(x):
        out = tiny.output.save()
    assert torch.equal(out, net(x))


def test_replacing_a_parameter_is_a_clear_error(tiny, x):
    from nnglass import TraceError
    with pytest.raises(TraceError, match="in place"):
        with tiny.trace(x):
            tiny.layer2.bias = tiny.layer1.output
    with tiny.trace(x):
        out = tiny.output.save()
    assert out.shape == (1, 2)
