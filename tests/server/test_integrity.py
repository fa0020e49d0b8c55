"""Integrity: whatever a job did to a hosted module's tensors, `Pristine.restore` puts back, bit for bit."""
import pytest
import torch

from nnglass.server.integrity import Pristine
from tests.conftest import make_net


def state(module: torch.nn.Module) -> dict:
    return {name: (t.dtype, t.requires_grad, t.detach().clone()) for name, t in module.state_dict(keep_vars=True).items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k][:2] == b[k][:2] and torch.equal(a[k][2], b[k][2]) for k in a)


@pytest.mark.parametrize("harm", [
    lambda net: net.layer1.weight.data.mul_(0),
    lambda net: torch.no_grad()(lambda: net.layer1.bias.add_(1))(),
    lambda net: setattr(net.layer1.weight, "data", net.layer1.weight.data.half()),
    lambda net: net.layer2.weight.requires_grad_(True),
    lambda net: net.layer2.weight.register_hook(lambda g: g * 0) if net.layer2.weight.requires_grad else None,
])
def test_restore_undoes_a_change_to_the_weights(harm):
    net = make_net()
    guard, before = Pristine(net), state(net)
    harm(net)
    guard.restore()
    assert same(state(net), before)
    assert not guard.restore()  # nothing changed since


def test_restore_drops_gradients_and_hooks_and_keeps_tied_weights_tied():
    net = make_net().requires_grad_(True)
    net.layer2.weight = net.layer2.weight  # the same object under one name
    guard = Pristine(net)
    net.layer1.weight.register_hook(lambda g: g)
    net(torch.ones(1, 5)).sum().backward()
    assert guard.restore()
    assert all(p.grad is None and not p._backward_hooks for p in net.parameters())
