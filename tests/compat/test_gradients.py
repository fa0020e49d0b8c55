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
