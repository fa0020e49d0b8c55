"""LanguageModel: loading, text inputs, batching with left padding and generation, checked against transformers."""
import contextlib

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, Qwen2Config)

import nnglass
from nnglass import LanguageModel
from nnglass.models import smollm2, smollm2_path

PROMPT = "The Eiffel Tower is in the city of"
SHORT = "Hello world"
PLACEHOLDER = "_ _ _ _ _ _ _ _ _"  # as many tokens as PROMPT in the SmolLM2 tokenizer


# -- fixtures: the SmolLM2 tokenizer, tiny random models saved to disk, SmolLM2 itself ----------------------
@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


def _configs(tok) -> dict:
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return {
        "gpt2": GPT2Config(n_layer=2, n_embd=32, n_head=2, **ids),
        "llama": LlamaConfig(num_key_value_heads=2, **small, **ids),
        "qwen2": Qwen2Config(num_key_value_heads=2, **small, **ids),
        "gpt_neox": GPTNeoXConfig(**small, **ids),
        "mistral": MistralConfig(num_key_value_heads=2, **small, **ids),
    }


ARCHS = ["gpt2", "llama", "qwen2", "gpt_neox", "mistral"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizer) -> dict:
    """Each architecture with random weights, saved with the tokenizer as a checkpoint directory."""
    dirs = {}
    for name, config in _configs(tokenizer).items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


@pytest.fixture(params=ARCHS)
def arch(request, tiny_dirs):
    """(path, plain transformers model) of one tiny architecture."""
    path = tiny_dirs[request.param]
    return path, AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def smol():
    return smollm2()


@pytest.fixture(scope="module")
def smol_hf():
    return AutoModelForCausalLM.from_pretrained(smollm2_path()).eval()


def logits_of(hf, tok, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return hf(**tok(prompt, return_tensors="pt")).logits


@contextlib.contextmanager
def zeroed(module: torch.nn.Module):
    """A plain forward hook that ablates a module's output, to compare edits with."""
    handle = module.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


# -- plain runs reproduce transformers ---------------------------------------------------------------------
def test_trace_without_edit_reproduces_transformers_logits_exactly(arch, tokenizer):
    path, hf = arch
    model = LanguageModel(path)
    with model.trace(PROMPT) as tracer:
        logits = model.lm_head.output.save()
        result = tracer.result.save()
    expected = logits_of(hf, tokenizer, PROMPT)
    assert torch.equal(logits, expected)
    assert torch.equal(result.logits, expected)


def test_generate_without_edit_reproduces_transformers_generate(arch, tokenizer):
    path, hf = arch
    model = LanguageModel(path)
    with model.generate(PROMPT, max_new_tokens=4, do_sample=False):
        steps = [model.lm_head.output.argmax(-1).save()] + [model.lm_head.next().output.argmax(-1).save()
                                                            for _ in range(3)]
        generated = model.generator.output.save()
    expected = hf.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert torch.equal(generated.value, expected)
    assert [int(s[0, -1]) for s in steps] == expected[0, -4:].tolist()


def test_trace_false_and_generate_trace_false_return_the_outputs(arch, tokenizer):
    path, hf = arch
    model = LanguageModel(path)
    output = model.trace(PROMPT, trace=False)
    assert torch.equal(output.logits, logits_of(hf, tokenizer, PROMPT))
    generated = model.generate(PROMPT, max_new_tokens=2, do_sample=False, trace=False)
    assert torch.equal(generated, hf.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=2,
                                              do_sample=False))


# -- batching: left padding, attention masks and position ids ----------------------------------------------
def test_invokes_of_different_lengths_match_separate_runs(arch, tokenizer):
    path, hf = arch
    model = LanguageModel(path)
    with model.trace() as tracer:
        with tracer.invoke(SHORT):
            short = model.lm_head.output.save()
        with tracer.invoke(PROMPT):
            long = model.lm_head.output.save()
    expected_short, expected_long = logits_of(hf, tokenizer, SHORT), logits_of(hf, tokenizer, PROMPT)
    assert short.shape == long.shape == expected_long.shape  # the short prompt is padded on the left
    n = expected_short.shape[1]
    torch.testing.assert_close(short[:, -n:], expected_short, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(short[:, -1], expected_short[:, -1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(long.value, expected_long, atol=1e-4, rtol=1e-5)


def test_list_of_prompts_in_one_invoke_matches_separate_runs(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    model = LanguageModel(tiny_dirs["llama"])
    with model.trace([PROMPT, SHORT]):
        last = model.lm_head.output[:, -1].save()
    expected = torch.cat([logits_of(hf, tokenizer, p)[:, -1] for p in (PROMPT, SHORT)])
    torch.testing.assert_close(last.value, expected, atol=1e-4, rtol=1e-5)


def test_generation_of_invokes_of_different_lengths_matches_separate_runs(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"]).eval()
    model = LanguageModel(tiny_dirs["qwen2"])
    with model.generate(max_new_tokens=3, do_sample=False) as tracer:
        with tracer.invoke(SHORT):
            short = model.generator.output.save()
        with tracer.invoke(PROMPT):
            long = model.generator.output.save()
    for ids, prompt in ((short, SHORT), (long, PROMPT)):
        expected = hf.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=3, do_sample=False)
        assert torch.equal(ids[:, -expected.shape[1]:], expected)


def test_tokenizer_keywords_reach_the_tokenizer(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"]).eval()
    model = LanguageModel(tiny_dirs["gpt2"])
    with model.trace(PROMPT, invoker_args={"max_length": 3, "truncation": True}) as tracer:
        first = model.lm_head.output.save()
    assert tracer.invoker.inputs[0][0]["input_ids"].shape == (1, 3)
    with model.trace() as tracer:
        with tracer.invoke(PROMPT, max_length=4, truncation=True):
            second = model.lm_head.output.save()
    for logits, length in ((first, 3), (second, 4)):
        encoded = tokenizer(PROMPT, max_length=length, truncation=True, return_tensors="pt")
        assert torch.equal(logits, hf(**encoded).logits)
    with model.trace(PROMPT, padding="max_length", max_length=12) as tracer:
        padded = model.lm_head.output.save()
    assert tracer.invoker.inputs[0][0]["attention_mask"].tolist() == [[0] * 3 + [1] * 9]
    torch.testing.assert_close(padded.value[:, 3:], logits_of(hf, tokenizer, PROMPT), atol=1e-4, rtol=1e-5)


# -- input forms -------------------------------------------------------------------------------------------
def test_every_input_form_gives_the_same_logits(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    model = LanguageModel(tiny_dirs["llama"])
    ids = tokenizer(PROMPT)["input_ids"]
    right_padded = tokenizer([PROMPT, SHORT], padding=True, padding_side="right", return_tensors="pt")
    forms = [PROMPT, [PROMPT], ids, [ids], torch.tensor(ids), torch.tensor([ids]),
             tokenizer(PROMPT, return_tensors="pt"), {"input_ids": ids, "attention_mask": [1] * len(ids)},
             right_padded]
    expected = logits_of(hf, tokenizer, PROMPT)
    for form in forms:
        with model.trace(form):
            logits = model.lm_head.output[:1].save()
        torch.testing.assert_close(logits.value, expected, atol=1e-5, rtol=0, msg=f"input form {type(form)}")
    with model.trace(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)):
        logits = model.lm_head.output.save()
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("bad", [3.5, [1.5, 2.5], torch.rand(1, 3), {"attention_mask": [1]}, [], None])
def test_bad_input_types_give_a_clear_error(tiny_dirs, bad):
    model = LanguageModel(tiny_dirs["gpt2"])
    with pytest.raises(TypeError, match="input"):
        with model.trace(bad):
            pass


def test_text_without_a_tokenizer_and_tokenizer_keywords_on_ids_are_errors(tokenizer):
    torch.manual_seed(0)
    model = LanguageModel(AutoModelForCausalLM.from_config(_configs(tokenizer)["gpt2"]))
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="tokenizer"):
        model.trace("hello", trace=False)
    with pytest.raises(TypeError, match="only to text"):
        model.trace([1, 2, 3], trace=False, max_length=2)
    assert model.trace([1, 2, 3], trace=False).logits.shape[:2] == (1, 3)


# -- loading -----------------------------------------------------------------------------------------------
def test_model_is_built_on_meta_and_loaded_on_the_first_trace(tiny_dirs, tokenizer):
    path = tiny_dirs["llama"]
    model = LanguageModel(path)
    layer = model.model.layers[0]
    assert not model.dispatched
    assert {p.device.type for p in model._model.parameters()} == {"meta"}
    with model.scan(PROMPT):
        shape = model.model.layers[0].mlp.output.shape
    assert shape == (1, len(tokenizer(PROMPT)["input_ids"]), 32)
    assert not model.dispatched
    with model.trace(PROMPT):
        device = model.model.layers[0].output.device
        hidden = model.model.layers[0].output.save()
    assert device.type == "cpu"  # the scan made before loading was dropped
    assert model.dispatched and {p.device.type for p in model._model.parameters()} == {"cpu"}
    assert layer._module is model._model.model.layers[0]
    assert model._modules_by_path["model.layers.0"] is model._model.model.layers[0]
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        expected = hf(**tokenizer(PROMPT, return_tensors="pt"), output_hidden_states=True).hidden_states[1]
    assert torch.equal(hidden, expected)


def test_dispatch_loads_at_once_and_generate_loads_too(tiny_dirs, tokenizer):
    path = tiny_dirs["mistral"]
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    eager = LanguageModel(path, dispatch=True)
    assert eager.dispatched
    assert torch.equal(eager.lm_head.weight, hf.lm_head.weight)
    lazy = LanguageModel(path)
    with lazy.generate(PROMPT, max_new_tokens=1, do_sample=False):
        pass
    assert lazy.dispatched
    assert torch.equal(lazy.lm_head.weight, hf.lm_head.weight)


def test_loading_keywords_reach_from_pretrained(tiny_dirs, tokenizer):
    path = tiny_dirs["llama"]
    model = LanguageModel(path, dtype=torch.bfloat16, device_map="cpu")
    assert next(model._model.parameters()).dtype == torch.bfloat16
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    assert torch.equal(logits, logits_of(hf, tokenizer, PROMPT))


def test_wrapping_a_built_model_and_pad_token_default(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    tok.pad_token = None
    model = LanguageModel(hf, tokenizer=tok)
    assert model.dispatched and model.tokenizer is tok and tok.pad_token == tok.eos_token
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    assert torch.equal(logits, logits_of(hf, tokenizer, PROMPT))


def test_a_built_model_loaded_from_a_directory_finds_its_tokenizer(tiny_dirs, tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"]).eval()
    model = LanguageModel(hf)
    assert model.tokenizer.get_vocab() == tokenizer.get_vocab()
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    assert torch.equal(logits, logits_of(hf, tokenizer, PROMPT))


def test_print_shows_the_module_tree_with_the_generator(tiny_dirs):
    text = repr(LanguageModel(tiny_dirs["gpt2"]))
    assert text.startswith("GPT2LMHeadModel(")
    assert "(h): ModuleList(" in text
    assert text.rstrip().endswith("(generator): WrapperModule(\n    (streamer): WrapperModule()\n  )\n)")


# -- the walkthrough's cells on SmolLM2 ---------------------------------------------------------------------
def test_smollm2_predicts_paris(smol, smol_hf):
    with smol.trace(PROMPT):
        token_ids = smol.lm_head.output.argmax(dim=-1).save()
    assert smol.tokenizer.decode(token_ids[0][-1]) == " Paris"
    assert torch.equal(token_ids, logits_of(smol_hf, smol.tokenizer, PROMPT).argmax(-1))


def test_smollm2_ablating_the_last_mlp_changes_the_prediction(smol, smol_hf):
    with smol.trace(PROMPT):
        smol.model.layers[-1].mlp.output[:] = 0
        token_ids = smol.lm_head.output.argmax(dim=-1).save()
    with zeroed(smol_hf.model.layers[-1].mlp):
        expected = logits_of(smol_hf, smol.tokenizer, PROMPT).argmax(-1)
    assert torch.equal(token_ids, expected)
    assert smol.tokenizer.decode(token_ids[0][-1]) != " Paris"


def test_smollm2_two_invokes_ablated_and_original_in_one_pass(smol, smol_hf):
    with smol.trace() as tracer:
        with tracer.invoke(PROMPT):
            smol.model.layers[-1].mlp.output[:] = 0
            ablated = smol.lm_head.output.save()
        with tracer.invoke(PROMPT):
            original = smol.lm_head.output.save()
    with zeroed(smol_hf.model.layers[-1].mlp):
        expected_ablated = logits_of(smol_hf, smol.tokenizer, PROMPT)
    torch.testing.assert_close(ablated.value, expected_ablated, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(original.value, logits_of(smol_hf, smol.tokenizer, PROMPT), atol=1e-4, rtol=1e-5)
    assert smol.tokenizer.decode(original.argmax(-1)[0][-1]) == " Paris"
    assert smol.tokenizer.decode(ablated.argmax(-1)[0][-1]) != " Paris"


def test_smollm2_moving_embeddings_between_prompts(smol, smol_hf):
    tok = smol.tokenizer
    assert len(tok(PLACEHOLDER)["input_ids"]) == len(tok(PROMPT)["input_ids"])
    with smol.trace() as tracer:
        with tracer.invoke(PROMPT):
            embeddings = smol.model.embed_tokens.output
        with tracer.invoke(PLACEHOLDER):
            smol.model.embed_tokens.output = embeddings
            moved = smol.lm_head.output.save()
        with tracer.invoke(PLACEHOLDER):
            placeholder = smol.lm_head.output.save()
    torch.testing.assert_close(moved.value, logits_of(smol_hf, tok, PROMPT), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(placeholder.value, logits_of(smol_hf, tok, PLACEHOLDER), atol=1e-4, rtol=1e-5)
    assert tok.decode(moved.argmax(-1)[0][-1]) == " Paris"


def test_smollm2_generation_with_next_over_three_tokens(smol, smol_hf):
    with smol.generate(PROMPT, max_new_tokens=3):
        token_ids_1 = smol.lm_head.output.argmax(dim=-1).save()
        token_ids_2 = smol.lm_head.next().output.argmax(dim=-1).save()
        token_ids_3 = smol.lm_head.next().output.argmax(dim=-1).save()
        output = smol.generator.output.save()
    expected = smol_hf.generate(**smol.tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert torch.equal(output.value, expected)
    assert [int(t[0][-1]) for t in (token_ids_1, token_ids_2, token_ids_3)] == expected[0, -3:].tolist()
    assert smol.tokenizer.decode(token_ids_1[0][-1]) == " Paris"
    assert smol.tokenizer.batch_decode(output.value)[0].startswith(PROMPT + " Paris")


def test_smollm2_an_edit_changes_what_is_generated(smol, smol_hf):
    forced = smol.tokenizer(" London")["input_ids"][0]
    with smol.generate(PROMPT, max_new_tokens=3):
        smol.lm_head.output[:, -1, forced] = 1e4
        output = smol.generator.output.save()
    calls = []

    def force_first_step(module, args, out):
        calls.append(None)
        if len(calls) == 1:
            out[:, -1, forced] = 1e4
        return out

    handle = smol_hf.lm_head.register_forward_hook(force_first_step)
    try:
        expected = smol_hf.generate(**smol.tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=3,
                                    do_sample=False)
    finally:
        handle.remove()
    assert torch.equal(output.value, expected)
    assert smol.tokenizer.decode(output.value[0, -3]) == " London"


def test_smollm2_edit_applies_to_every_later_trace_of_the_edited_model(smol, smol_hf):
    tok = smol.tokenizer
    with smol.trace("The Eiffel Tower is located in the city of"):
        hidden = smol.model.layers[-1].output[:, -1, :].save()
    with smol.edit() as edited:
        smol.model.layers[-1].output[:, -1, :] = hidden
    other = "Madison Square Garden is located in the city of"
    with smol.trace(other):
        original = smol.lm_head.output.save()
    with edited.trace(other):
        patched = smol.lm_head.output.save()

    def patch(module, args, out):
        out[:, -1, :] = hidden.value
        return out

    handle = smol_hf.model.layers[-1].register_forward_hook(patch)
    try:
        expected = logits_of(smol_hf, tok, other)
    finally:
        handle.remove()
    torch.testing.assert_close(patched.value, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(original.value, logits_of(smol_hf, tok, other), atol=1e-4, rtol=1e-5)
    assert tok.decode(patched.value[0, -1].argmax()) == " Paris"


def test_all_addresses_every_generation_step(smol, smol_hf):
    prompt = "The Eiffel Tower is in the city of"
    with smol.generate(prompt, max_new_tokens=3):
        steps = nnglass.list().save()
        steps.append(smol.lm_head.all().output.argmax(dim=-1))
        out = smol.generator.output.save()
    assert [s[0, -1].item() for s in steps.value] == out[0, -3:].tolist()
    ids = smol.tokenizer(prompt, return_tensors="pt")
    assert torch.equal(out.value, smol_hf.generate(**ids, max_new_tokens=3, do_sample=False))
