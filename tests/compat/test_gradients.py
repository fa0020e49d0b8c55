"""Gradients as 0.4 reads them: retain_grad() on activations, several backward passes in one trace."""
from collections import OrderedDict

import pytest
import torch

from nnglass import NNsight


@pytest.fixture
def trainable():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))]))


def by_hand(net, x, losses):
    """layer1's output gradient for each loss of the output, in turn."""
    hidden = []
    handle = net.layer1.register_forward_hook(lambda m, i, o: hidden.append(o))
    try:
        out = net(x)
    finally:
        handle.remove()
    return [torch.autograd.grad(loss(out), hidden[0], retain_graph=True)[0] for loss in losses]


def test_retain_grad_on_an_activation(trainable, x):
    model = NNsight(trainable)
    with model.trace(x):
        hidden = model.layer1.output
        hidden.retain_grad()
        model.output.sum().backward()
        grad = hidden.grad.save()
    assert torch.equal(grad, by_hand(trainable, x, [lambda o: o.sum()])[0])


def test_each_backward_pass_gives_its_own_gradient(trainable, x):
    model = NNsight(trainable)
    losses = [lambda o: o[:, 0].sum(), lambda o: (o[:, 1] ** 2).sum(), lambda o: o.sum()]
    with model.trace(x):
        hidden = model.layer1.output
        out = model.output
        grads = []
        for loss in losses[:2]:
            with loss(out).backward(retain_graph=True):
                grads.append(hidden.grad.save())
        losses[2](out).backward()
        grads.append(hidden.grad.save())
    expected = by_hand(trainable, x, losses)
    assert all(torch.allclose(g.value, e) for g, e in zip(grads, expected))
    assert not torch.allclose(grads[0].value, grads[1].value)


def test_grad_reads_before_each_plain_backward_call_belong_to_that_pass(trainable, x):
    model = NNsight(trainable)
    losses = [lambda o: o[:, 0].sum(), lambda o: (o[:, 1] ** 2).sum()]
    with model.trace(x):
        hidden = model.layer1.output
        out = model.output
        first = hidden.grad.save()       # 0.4: read the gradient, then call backward
        losses[0](out).backward(retain_graph=True)
        second = hidden.grad.save()
        losses[1](out).backward()
        last = hidden.grad.save()        # after the last pass: that pass's gradient
    expected = by_hand(trainable, x, losses)
    assert torch.allclose(first, expected[0]) and torch.allclose(second, expected[1])
    assert torch.allclose(last, expected[1])


def test_a_gradient_edit_before_a_plain_backward_applies_to_that_pass_only(trainable, x):
    model = NNsight(trainable)
    with model.trace(x):
        out = model.output
        model.layer1.output.grad[:] = 0   # the first pass's gradient at layer 1 only
        out.sum().backward(retain_graph=True)
        out.sum().backward()
    in_trace = trainable.layer1.weight.grad.clone(), trainable.layer2.weight.grad.clone()
    trainable.zero_grad()
    trainable(x).sum().backward()         # one untouched pass by hand
    assert torch.allclose(in_trace[0], trainable.layer1.weight.grad)
    assert torch.allclose(in_trace[1], 2 * trainable.layer2.weight.grad)


def test_the_gradient_of_a_view_made_in_the_trace_is_cut_from_its_tensors(trainable):
    """`output[:, 2:5].grad` (a view off the loss's path, as GPT-2's `output[0]` is under transformers 5):
    each invoke gets its rows of the gradient at those columns, as by hand on that invoke alone."""
    model = NNsight(trainable)
    torch.manual_seed(2)
    inputs = [torch.rand(1, 5), torch.rand(2, 5)]
    with model.trace() as tracer:
        grads = []
        for x in inputs:
            with tracer.invoke(x):
                columns = model.layer1.output[:, 2:5]
                with model.output.sum().backward(retain_graph=True):
                    grads.append(columns.grad.save())
    for grad, x in zip(grads, inputs):
        assert torch.allclose(grad.value, by_hand(trainable, x, [lambda o: o.sum()])[0][:, 2:5])


def test_an_edit_of_a_views_gradient_reaches_the_model(trainable, x):
    model = NNsight(trainable)
    with model.trace(x):
        model.layer1.output[:, 2:5].grad = torch.zeros(1, 3)
        model.output.sum().backward()
    in_trace = trainable.layer1.weight.grad.clone()
    trainable.zero_grad()
    hidden = trainable.layer1(x)
    hidden.register_hook(lambda g: torch.cat([g[:, :2], torch.zeros(1, 3), g[:, 5:]], dim=1))
    trainable.layer2(hidden).sum().backward()
    assert torch.allclose(in_trace, trainable.layer1.weight.grad)
    assert torch.equal(in_trace[2:5], torch.zeros(3, 5)) and not torch.equal(in_trace[:2], torch.zeros(2, 5))
