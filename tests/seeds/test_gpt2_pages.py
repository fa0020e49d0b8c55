"""The early-stopping pages and walkthrough part 2 with their own code, on a tiny random GPT-2.

The seed code runs unchanged except for the model id (no hub here: a tiny GPT-2 saved to disk)
and one index: transformers 5 layers return a tensor, so `h[11].output[0][:, -1, :]` becomes
`h[-1].output[:, -1, :]`.
"""
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from nnglass import LanguageModel
from nnglass.models import smollm2_path

PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    config = GPT2Config(n_layer=8, n_embd=32, n_head=2, vocab_size=len(tok),
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(gpt2_dir):
    model = LanguageModel(gpt2_dir, device_map="cpu")
    model.dispatch()  # so that test hooks go on the loaded modules
    return model


@pytest.fixture(scope="module")
def hf(gpt2_dir):
    return AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()


def hidden_states(hf, model, prompt):
    ids = model.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        return hf(**ids, output_hidden_states=True)


def count_calls(model):
    calls = []
    for block in model._model.transformer.h:
        block.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_seed000_tracer_stop_after_layer_5(model, hf):  # 000 [14]
    prompt = PROMPT
    calls = count_calls(model)
    with model.trace(prompt) as tracer:
        hs = model.transformer.h[5].output.save()
        tracer.stop()
    assert len(calls) == 6
    assert torch.allclose(hs.value, hidden_states(hf, model, prompt).hidden_states[6], atol=1e-5)
    for block in model._model.transformer.h:
        block._forward_hooks.clear()


def test_seed000_later_values_undefined(model):  # 000 [15]
    with model.trace(PROMPT) as tracer:
        model.transformer.h[0].output
        tracer.stop()
        hs_1 = model.transformer.h[1].output.save()
    with pytest.raises(ValueError, match="Accessing value before it's been set."):
        print("L2 - Output: ", hs_1)


def test_seed000_time_saving_is_real(model):  # 000 [16]: the stopped run does less work
    def run(stop: bool) -> float:
        start = time.perf_counter()
        for _ in range(5):
            with model.trace(PROMPT) as tracer:
                model.transformer.h[0].output.save()
                if stop:
                    tracer.stop()
        return time.perf_counter() - start
    run(True), run(False)
    assert run(True) < run(False)


def test_seed001_envoy_stop_and_unset_later_layer(model, hf):  # 001 [1], [2]
    with model.trace(PROMPT):
        l1_out = model.transformer.h[0].output.save()
        model.transformer.h[0].output.stop()
    assert torch.allclose(l1_out.value, hidden_states(hf, model, PROMPT).hidden_states[1], atol=1e-5)
    with model.trace(PROMPT):
        l2_out = model.transformer.h[1].output.save()
        model.transformer.h[0].output.stop()
    with pytest.raises(ValueError, match="Accessing value before it's been set."):
        print("L2 - Output: ", l2_out)


def test_walkthrough_28_ablate_last_mlp(model, hf):
    with model.trace(PROMPT):
        model.transformer.h[-1].mlp.output[0][:] = 0
        token_ids = model.lm_head.output.argmax(dim=-1).save()
    handle = hf.transformer.h[-1].mlp.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
    ids = model.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**ids).logits.argmax(dim=-1)
    handle.remove()
    assert torch.equal(token_ids.value, expected)
    assert isinstance(model.tokenizer.decode(token_ids[0][-1]), str)


def test_walkthrough_29_30_invokes_and_moved_embeddings(model, hf):
    with model.trace() as tracer:
        with tracer.invoke(PROMPT):
            model.transformer.h[-1].mlp.output[0][:] = 0
            token_ids_intervention = model.lm_head.output.argmax(dim=-1).save()
        with tracer.invoke(PROMPT):
            token_ids_original = model.lm_head.output.argmax(dim=-1).save()
    ids = model.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(token_ids_original.value, hf(**ids).logits.argmax(-1))
    placeholder = " ".join(["_"] * ids["input_ids"].shape[1])
    assert model.tokenizer(placeholder, return_tensors="pt")["input_ids"].shape == ids["input_ids"].shape
    with model.trace() as tracer:
        with tracer.invoke(PROMPT):
            embeddings = model.transformer.wte.output
        with tracer.invoke(placeholder):
            model.transformer.wte.output = embeddings
            token_ids_intervention = model.lm_head.output.argmax(dim=-1).save()
    with torch.no_grad():
        assert torch.equal(token_ids_intervention.value, hf(**ids).logits.argmax(-1))


def test_walkthrough_31_generate_with_next(model, hf):
    with model.generate(PROMPT, max_new_tokens=3):
        token_ids_1 = model.lm_head.output.argmax(dim=-1).save()
        token_ids_2 = model.lm_head.next().output.argmax(dim=-1).save()
        token_ids_3 = model.lm_head.next().output.argmax(dim=-1).save()
        output = model.generator.output.save()
    ids = model.tokenizer(PROMPT, return_tensors="pt")
    expected = hf.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    assert torch.equal(output.value, expected)
    steps = [token_ids_1[0][-1], token_ids_2[0][-1], token_ids_3[0][-1]]
    assert [int(t) for t in steps] == expected[0, -3:].tolist()
    assert model.tokenizer.batch_decode(output.value)[0].startswith(PROMPT)


def test_walkthrough_32_34_edit_and_clear_edits(model, hf):
    with model.trace("The Eiffel Tower is located in the city of"):
        hs11 = model.transformer.h[-1].output[:, -1, :].save()
    with model.edit() as model_edited:
        model.transformer.h[-1].output[:, -1, :] = hs11
    with model.trace("Vatican is located in the city of"):
        original_tokens = model.lm_head.output.argmax(dim=-1).save()
    with model_edited.trace("Vatican is located in the city of"):
        modified_tokens = model.lm_head.output.argmax(dim=-1).save()
    with model.trace("The Eiffel Tower is located in the city of"):
        paris_tokens = model.lm_head.output.argmax(dim=-1).save()
    assert modified_tokens[0][-1] == paris_tokens[0][-1]
    with model.edit(inplace=True):
        model.transformer.h[-1].output[:, -1, :] = hs11
    with model.trace("Vatican is located in the city of"):
        inplace_tokens = model.lm_head.output.argmax(dim=-1).save()
    model.clear_edits()
    with model.trace("Vatican is located in the city of"):
        cleared_tokens = model.lm_head.output.argmax(dim=-1).save()
    assert inplace_tokens[0][-1] == paris_tokens[0][-1]
    assert torch.equal(cleared_tokens.value, original_tokens.value)
