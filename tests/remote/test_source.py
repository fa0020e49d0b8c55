"""`.source` points through the server: the wire names them, the server rewrites its own copy."""
import pytest
import torch

from nnglass import LanguageModel
from nnglass.remote.client import RemoteError
from tests.conftest import tiny_llama
from tests.server.serving import hosting, tiny_model


def _llama(tokenizer) -> LanguageModel:
    model = LanguageModel(tiny_llama(tokenizer, 2), tokenizer=tokenizer)
    model._remote_name = "llama"
    return model


@pytest.fixture(scope="module")
def hosted(tmp_path_factory, smol_tokenizer):
    """The tiny net and a tiny Llama (same seeded weights as the client's) on one server."""
    models = {"tiny": tiny_model(), "llama": _llama(smol_tokenizer)}
    with hosting(models, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.mark.parametrize("remote", [False, True])
def test_a_point_inside_linear_reads_and_assigns_like_local(tiny, x, remote):
    linear = tiny.layer1.source.F_linear_0
    with tiny.trace(x, remote=remote):
        before = linear.output.clone().save()
        linear.output[:, 0] = 0
        hidden = tiny.layer1.output.save()
        weight_in = linear.inputs.save()
    module = tiny._model.layer1
    assert torch.allclose(before, module(x))
    assert torch.equal(hidden[:, 0], torch.zeros(1)) and torch.equal(hidden[:, 1:], before[:, 1:])
    args, _ = weight_in.value
    assert torch.equal(args[1], module.weight)
    assert "forward" not in module.__dict__


def test_the_server_refuses_a_point_its_forward_does_not_have(tiny, x, monkeypatch):
    from nnglass.remote import serialize
    real = serialize.request

    def renamed(recorder):  # a client that names a call the server's Linear.forward does not make
        body = real(recorder)
        for node in body["graphs"][0]["nodes"]:
            if node["target"] == "layer1.source.F_linear_0":
                node["target"] = "layer1.source.F_linear_9"
        return body

    monkeypatch.setattr(serialize, "request", renamed)
    with pytest.raises(RemoteError, match="no module 'layer1.source.F_linear_9'"):
        with tiny.trace(x, remote=True):
            tiny.layer1.source.F_linear_0.output.save()


def test_llama_attention_and_mlp_points_with_two_invokes_and_generation_match_local(hosted, smol_tokenizer):
    llama = _llama(smol_tokenizer)
    attn, mlp = llama.model.layers[0].self_attn, llama.model.layers[1].mlp

    def run(remote):
        with llama.trace(remote=remote) as tracer:
            with tracer.invoke("Hello"):
                rope = attn.source.apply_rotary_pos_emb_0.output[0].save()
                inner = attn.source.attention_interface_0.source.torch_nn_functional_scaled_dot_product_attention_0
                sdpa = inner.output.save()
            with tracer.invoke("The Eiffel Tower is in the city of"):
                mlp.source.mul_0.output[:] = 0
                logits = llama.lm_head.output.save()
        with llama.generate("Hello", max_new_tokens=2, remote=remote):
            q = attn.source.self_q_proj_0
            steps = [q.output.save(), q.next().output.save()]
        return rope.value, sdpa.value, logits.value, *[s.value for s in steps]

    local, remote = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(local, remote))
    assert remote[-1].shape[1] == 1
