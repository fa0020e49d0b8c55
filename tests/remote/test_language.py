"""SmolLM2 through the server: the walkthrough's remote trace, a session and generate, against local runs."""
import pytest
import torch

from nnglass.models import smollm2
from tests.server.serving import hosting

PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"smollm2": smollm2()}, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.fixture(scope="module")
def llama(hosted):
    """The client's model: built from the config only; the weights load on the first local run."""
    return smollm2()


def test_walkthrough_remote_trace_matches_local_and_loads_no_weights(llama):
    def run(remote):
        with llama.trace(PROMPT, remote=remote):
            hidden_states = llama.model.layers[-1].output.save()
            output = llama.output.save()
        return hidden_states.value, output.value

    hidden, output = run(True)
    assert not llama.dispatched  # the client never needed the weights
    local_hidden, local_output = run(False)
    assert torch.equal(hidden, local_hidden)
    assert type(output) is type(local_output) and torch.equal(output["logits"], local_output["logits"])
    assert llama.tokenizer.decode(output.logits[0, -1].argmax()) == " Paris"


def test_session_moves_a_hidden_state_between_prompts(llama):
    def run(remote):
        with llama.session(remote=remote):
            with llama.trace(PROMPT):
                hs = llama.model.layers[20].output[:, -1, :]
                t1 = llama.lm_head.output.argmax(dim=-1).save()
            with llama.trace("Buckingham Palace is in the city of"):
                llama.model.layers[1].output[:, -1, :] = hs[:]
                t2 = llama.lm_head.output.argmax(dim=-1).save()
        return t1.value, t2.value

    local, remote = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(local, remote))
    assert llama.tokenizer.decode(remote[0][0][-1]) == " Paris"


@pytest.mark.parametrize("blocking", [True, False])
def test_generate_three_tokens_matches_local(llama, blocking):
    def run(remote):
        with llama.generate("Hello", max_new_tokens=3, remote=remote, blocking=blocking or not remote) as tracer:
            logits = llama.lm_head.output.save()
            out = llama.generator.output.save()
        if tracer.job is not None:
            assert set(tracer.job.result()) == {"logits", "out"}
        return logits.value, out.value

    (local_logits, local_out), (logits, out) = run(False), run(True)
    assert out.shape[1] == local_out.shape[1] and torch.equal(out, local_out)
    assert torch.equal(logits, local_logits)


def test_standard_names_and_logit_lens_ops_work_remotely(llama, hosted):
    from nnglass.models import smollm2_path
    from nnglass.modeling.standard import StandardizedTransformer

    standard = StandardizedTransformer(str(smollm2_path()))
    standard._remote_name = "smollm2"  # hosted under the helper's name

    def run(remote):
        with standard.trace(PROMPT, remote=remote):
            layer = standard.layers_output[3].save()
            standard.mlps_output[2][:] = 0
            lens = standard.lm_head(standard.ln_final(standard.layers_output[20]))[:, -1].argmax(-1).save()
            probs = standard.next_token_probs.save()
        return layer.value, lens.value, probs.value

    remote, local = run(True), run(False)
    assert all(torch.allclose(r, l) for r, l in zip(remote, local))
    from nnglass.analysis import logit_lens, patch_activations, steer
    lens_remote, lens_local = logit_lens(standard, PROMPT, remote=True), logit_lens(standard, PROMPT)
    assert lens_remote.tokens == lens_local.tokens and lens_remote.tokens[-1][-1] == " Paris"
    vector = torch.ones(576)
    assert torch.allclose(steer(standard, PROMPT, vector, [3], remote=True), steer(standard, PROMPT, vector, [3]))
    args = (standard, PROMPT, "The Colosseum is in the city of")
    kwargs = dict(layers=[28, 29], positions=[-1])
    assert torch.allclose(patch_activations(*args, **kwargs, remote=True).effect,
                          patch_activations(*args, **kwargs).effect, atol=1e-4)


@pytest.mark.parametrize("settings", [{}, {"num_beams": 2}])
def test_shapes_in_a_remote_generate_are_those_of_its_first_step(hosted, settings):
    llama = smollm2()  # weights not loaded: the scan runs on fake tensors
    with llama.generate(PROMPT, max_new_tokens=2, remote=True, **settings):
        shape = llama.lm_head.output.shape  # the last token's logits, one row per beam
        logits = llama.lm_head.output.save()
    assert not llama.dispatched
    assert shape == logits.value.shape == (settings.get("num_beams", 1), 1, 49152)
