"""Shared state: an attacker's job changes nothing that the next user's job sees (weights, dtypes, grads)."""
import pytest
import torch

from nnglass import NNsight
from nnglass.server import Limits
from tests.conftest import make_net
from tests.server.attacks.craft import attack, final, node, post, ref, refused
from tests.server.serving import hosting


def trainable() -> NNsight:
    """The tiny net with weights that take gradients (the case where a job's backward reaches them)."""
    model = NNsight(make_net().requires_grad_(True))
    model._remote_name = "tiny"
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["forked", "in-process"])
def hosted(request, tmp_path_factory):
    """Jobs in forked processes (weights copy-on-write) and on threads (weights put back after each job)."""
    limits = Limits(isolate=request.param)
    with hosting({"tiny": trainable()}, tmp_path_factory.mktemp("server"), limits) as served:
        yield served


def victim(x: torch.Tensor) -> list[torch.Tensor]:
    """What an honest user's job computes: the hidden layer and the output."""
    model = trainable()
    with model.trace(x, remote=True):
        hidden = model.layer1.output.save()
        out = model.output.save()
    return [hidden.value, out.value]


def weights(hosted) -> dict[str, torch.Tensor]:
    return dict(hosted.app.state.host.models["tiny"]._model.named_parameters())


def test_an_attackers_job_leaves_the_next_users_results_bit_for_bit_unchanged(hosted, x, tmp_path):
    with hosting({"tiny": trainable()}, tmp_path) as fresh:
        expected = victim(x)
    grad_fn = node("getattr", "grad_fn", ref(0))
    chain = [grad_fn, node("getattr", "next_functions", ref(1)), node("call_function", "operator.getitem", ref(2), 0),
             node("call_function", "operator.getitem", ref(3), 0), node("getattr", "variable", ref(4)),
             node("getattr", "data", ref(5)), node("call_method", "add_", ref(6), 100.0)]
    refused(post(hosted, attack(x, *chain)), 400, "reading attribute 'grad_fn'")
    refused(post(hosted, attack(x, node("call_method", "register_hook", ref(0), None))), 400, "'register_hook'")
    refused(post(hosted, attack(x, node("setattr", "dtype", ref(0), {"$dtype": "float16"}))), 400, "'dtype'")
    # a job's own backward pass is allowed; the gradients it leaves on the hosted weights are not kept
    loss = node("call_method", "sum", ref(0))
    response = post(hosted, attack(x, loss, node("backward", None, ref(1))))
    assert final(hosted, response.json()["job_id"])["status"] == "COMPLETED"
    assert all(p.grad is None for p in weights(hosted).values())
    got = victim(x)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))


def test_a_job_edits_activations_but_never_the_weights(hosted, x):
    before = {name: p.detach().clone() for name, p in weights(hosted).items()}
    response = post(hosted, attack(x, node("call_method", "mul_", ref(0), 0.0)))
    assert final(hosted, response.json()["job_id"])["status"] in ("COMPLETED", "ERROR")
    assert all(torch.equal(p, before[name]) for name, p in weights(hosted).items())
