"""nnsight 0.5+'s generation steps, invokes and barriers, written as its docs write them, against hand hooks."""
import pytest
import torch

import nnglass as nnsight
from nnglass import LanguageModel
from nnglass.intervention.skips import SkippedModuleError
from tests.conftest import tiny_gpt2, tiny_llama

PROMPT = "The Eiffel Tower is in the city of"
LAYERS = 2
STEPS = 3


@pytest.fixture(scope="module")
def hf(tok):
    return tiny_llama(tok, LAYERS)


@pytest.fixture(scope="module")
def model(hf, tok):
    return LanguageModel(hf, tokenizer=tok)


def generate(hf, tok, prompts=PROMPT, edit=None, steps=STEPS, **kwargs):
    """Generated ids and the last layer's output per step; edit(step, hidden) -> hidden, as a forward hook."""
    seen, calls = [], []

    def hook(module, args, out):
        step = len(calls)
        calls.append(step)
        if edit is not None:
            out = edit(step, out)
        seen.append(out)
        return out
    handle = hf.model.layers[-1].register_forward_hook(hook)
    try:
        batch = tok(prompts, return_tensors="pt", padding=True)
        ids = hf.generate(**batch, max_new_tokens=steps, do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)
    finally:
        handle.remove()
    return ids, seen


def zero_at(chosen):
    return lambda step, out: out * 0 if step in chosen else out


@pytest.mark.parametrize("steps", ["iter", "all"])
def test_iter_all_steps_collects_each_step(model, hf, tok, steps):
    with model.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        hidden_states = nnsight.save([])
        for step in (tracer.iter[:] if steps == "iter" else tracer.all()):
            hidden_states.append(model.model.layers[-1].output)
    _, seen = generate(hf, tok)
    assert len(hidden_states) == STEPS
    for got, expected in zip(hidden_states, seen):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("which, chosen", [(slice(1, 3), {1, 2}), ([0, 2], {0, 2}), (1, {1})])
def test_iter_slices_and_lists_edit_only_those_steps(model, hf, tok, which, chosen):
    with model.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        for step in tracer.iter[which]:
            model.model.layers[-1].output[:] = 0
        output = tracer.result.save()
    expected, _ = generate(hf, tok, edit=zero_at(chosen))
    assert torch.equal(output, expected)


@pytest.mark.parametrize("remote", [False, "local"])
def test_condition_per_step(model, hf, tok, remote):
    with model.generate(PROMPT, max_new_tokens=STEPS, remote=remote) as tracer:
        for step in tracer.iter[:]:
            if step == 1:
                model.model.layers[-1].output[:] = 0
        output = tracer.result.save()
    assert torch.equal(output, generate(hf, tok, edit=zero_at({1}))[0])


@pytest.mark.parametrize("remote", [False, "local"])
def test_all_applies_at_every_step(model, hf, tok, remote):
    with model.generate(PROMPT, max_new_tokens=STEPS, remote=remote) as tracer:
        with tracer.all():
            model.model.layers[-1].output[:] = 0
        output = tracer.result.save()
    assert torch.equal(output, generate(hf, tok, edit=zero_at(range(STEPS)))[0])


def test_tracer_next_moves_every_module_to_the_next_step(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        first = model.model.layers[-1].output.save()
        tracer.next()
        second = model.model.layers[-1].output.save()
        model.model.layers[-1].next().output[:] = 0
    ids, seen = generate(hf, tok, edit=zero_at({2}))
    torch.testing.assert_close(first, seen[0])
    torch.testing.assert_close(second, seen[1])


def test_unbounded_loop_ends_when_generation_ends_and_code_after_runs(model, hf, tok):
    ids, _ = generate(hf, tok, steps=STEPS)
    stop = int(ids[0, -2])  # the token generated at the second step ends generation there
    with model.generate(PROMPT, max_new_tokens=STEPS, eos_token_id=stop) as tracer:
        logits = nnsight.save([])
        for step in tracer.iter[:]:
            logits.append(model.lm_head.output)
        after = model.lm_head.output.argmax(dim=-1).save()
        output = tracer.result.save()
    expected, _ = generate(hf, tok, steps=STEPS, eos_token_id=stop)
    assert torch.equal(output, expected) and expected.shape[1] == ids.shape[1] - 1
    assert len(logits) == 2
    assert torch.equal(after, logits[0].argmax(dim=-1))


def test_result_is_the_model_output(model, hf, tok):
    with model.trace(PROMPT) as tracer:
        result = tracer.result.save()
    torch.testing.assert_close(result.logits, hf(**tok(PROMPT, return_tensors="pt")).logits)


def test_empty_invoke_sees_the_whole_batch(model, hf, tok):
    prompts = ["Hello world", PROMPT]
    with model.trace() as tracer:
        with tracer.invoke(prompts[0]):
            first = model.lm_head.output.save()
        with tracer.invoke(prompts[1]):
            model.model.layers[0].output[:] *= 2
        with tracer.invoke():
            everything = model.lm_head.output.save()
    assert first.shape[0] == 1 and everything.shape[0] == 2
    torch.testing.assert_close(everything[:1], first)


def test_barrier_lets_a_value_cross_invokes(model, hf, tok):
    with model.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(PROMPT):
            embeddings = model.model.embed_tokens.output
            barrier()
        with tracer.invoke(PROMPT):
            barrier()
            model.model.embed_tokens.output = embeddings * 0
            logits = model.lm_head.output.save()
    handle = hf.model.embed_tokens.register_forward_hook(lambda m, a, out: out * 0)
    try:
        expected = hf(**tok(PROMPT, return_tensors="pt")).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits, expected)


def test_envoy_iter_addresses_one_module_per_step(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=STEPS):
        hidden_states = nnsight.save([])
        for step in model.model.layers[-1].iter[0:2]:
            hidden_states.append(model.model.layers[-1].output)
    _, seen = generate(hf, tok)
    assert len(hidden_states) == 2
    for got, expected in zip(hidden_states, seen):
        torch.testing.assert_close(got, expected)


def test_skip_a_layer_its_input_stands_for_its_output(model, hf, tok):
    ran = []
    handle = hf.model.layers[1].mlp.register_forward_hook(lambda m, a, out: ran.append(1))
    try:
        with model.trace(PROMPT):
            model.model.layers[1].skip(model.model.layers[0].output)
            logits = model.lm_head.output.save()
    finally:
        handle.remove()
    assert ran == []  # the skipped layer did not run, so neither did its MLP
    hooks = [hf.model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out)),
             hf.model.layers[1].register_forward_hook(lambda m, a, out: seen[0])]
    seen = []
    try:
        expected = hf(**tok(PROMPT, return_tensors="pt")).logits
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(logits, expected)
    assert "forward" not in hf.model.layers[1].__dict__


def test_skip_in_one_invoke_only(tiny, net, x):
    with tiny.trace() as tracer:
        with tracer.invoke(x):
            tiny.layer2.skip(torch.zeros(1, 2))
            skipped = tiny.output.save()
        with tracer.invoke(x):
            kept = tiny.output.save()
    torch.testing.assert_close(skipped, torch.zeros(1, 2))
    torch.testing.assert_close(kept, net(x))


def test_a_read_inside_a_skipped_module_is_refused_where_it_is_written(model, hf, tok):
    layer = model.model.layers[1]
    with pytest.raises(SkippedModuleError, match=r"'model.layers.1.mlp' never runs here(.|\n)*the skip: .*skip\("):
        with model.trace(PROMPT):
            layer.skip(model.model.layers[0].output)
            layer.mlp.output.save()
    with pytest.raises(ValueError, match="'model.layers.1.self_attn' never runs here"):  # a ValueError, as nnsight
        with model.trace(PROMPT):
            layer.self_attn.output.save()  # the read may come first
            layer.skip(model.model.layers[0].output)
    seen, handle = [], hf.model.layers[1].mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        hf(**tok(PROMPT, return_tensors="pt"))
    finally:
        handle.remove()
    with model.trace() as tracer:  # the next trace is fine, and so is another invoke's read
        with tracer.invoke(PROMPT):
            layer.skip(model.model.layers[0].output)
        with tracer.invoke(PROMPT):
            mlp = layer.mlp.output.save()
    torch.testing.assert_close(mlp, seen[0])


def test_skip_whose_value_comes_later_is_refused(tiny, x):
    with pytest.raises(nnsight.CausalityError, match="This skip cannot be applied"):
        with tiny.trace(x):
            tiny.layer1.skip(tiny.layer2.output)


# -- tracer.cache as in nnsight 0.5+ ------------------------------------------------------------------------
@pytest.mark.parametrize("remote", [False, "local"])
def test_cache_with_inputs_holds_each_module_input_also_remote(model, hf, tok, remote):
    with model.trace(PROMPT, remote=remote) as tracer:
        cache = tracer.cache(include_inputs=True)
    seen, handle = [], hf.model.layers[1].register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    try:
        hf(**tok(PROMPT, return_tensors="pt"))
    finally:
        handle.remove()
    torch.testing.assert_close(cache["model.model.layers.1"].input, seen[0][0])
    torch.testing.assert_close(cache["model.model.layers.1"].output, seen[0][1])


@pytest.mark.parametrize("remote", [False, "local"])
def test_cache_asked_for_after_an_edit_holds_what_runs_from_there_on(model, hf, tok, remote):
    layers = model.model.layers
    with model.trace(PROMPT, remote=remote) as tracer:
        layers[0].mlp.output = torch.zeros_like(layers[0].mlp.output)
        cache = tracer.cache(include_inputs=True)
    zero = hf.model.layers[0].mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    seen, handle = [], hf.model.layers[1].register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    try:
        hf(**tok(PROMPT, return_tensors="pt"))
    finally:
        zero.remove(), handle.remove()
    assert "model.model.layers.0.self_attn" not in cache and "model.model.embed_tokens" not in cache  # ran before
    assert cache["model.model.layers.0.mlp"].inputs is None  # its input came before the edit
    assert torch.count_nonzero(cache["model.model.layers.0.mlp"].output) == 0  # the edited output
    assert cache["model.model"].inputs is None and cache["model.model"].output is not None
    torch.testing.assert_close(cache["model.model.layers.1"].input, seen[0][0])
    torch.testing.assert_close(cache["model.model.layers.1"].output, seen[0][1])
    with model.trace(PROMPT) as tracer:  # asked for first, it holds every module
        cache = tracer.cache()
    assert "model.model.embed_tokens" in cache


def test_cache_is_saved_and_keyed_by_module_path_with_aliases(hf, tok):
    model = LanguageModel(hf, tokenizer=tok, rename={"model.layers": "layers"})
    with model.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=[model.layers[0], "lm_head"], include_inputs=True)
    expected = {}
    hooks = [hf.model.layers[0].register_forward_hook(lambda m, a, out: expected.update(out=out, into=a[0])),
             hf.lm_head.register_forward_hook(lambda m, a, out: expected.update(logits=out))]
    try:
        hf(**tok(PROMPT, return_tensors="pt"))
    finally:
        for hook in hooks:
            hook.remove()
    assert set(cache.keys()) == {"model.model.layers.0", "model.lm_head"}
    assert set(cache.keys(alias=True)) == {"model.layers.0", "model.lm_head"}  # as the renamed model spells them
    for key in ("model.layers.0", "layers.0", "model.model.layers.0"):
        torch.testing.assert_close(cache[key].output, expected["out"])
    torch.testing.assert_close(cache.layers[0].output, expected["out"])
    torch.testing.assert_close(cache.model.model.layers[0].input, expected["into"])
    torch.testing.assert_close(cache["model.lm_head"].output, expected["logits"])


def test_cache_options_detach_dtype_device(tiny, net, x):
    x = x.clone().requires_grad_(True)
    with tiny.trace(x) as tracer:
        detached = tracer.cache(modules=[tiny.layer1], dtype=torch.float16, device="cpu")
    with tiny.trace(x) as tracer:
        attached = tracer.cache(modules=[tiny.layer1], detach=False)
    entry = detached["layer1"].output
    assert entry.dtype == torch.float16 and not entry.requires_grad and entry.device.type == "cpu"
    torch.testing.assert_close(entry, net.layer1(x).detach().half())
    assert attached["layer1"].output.requires_grad  # x needs a gradient, so layer1's output has one


def test_cache_attributes_from_nnsights_root_name_of_a_model_without_a_model_child(tiny, net, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache()
    torch.testing.assert_close(cache.model.layer1.output, net.layer1(x))
    torch.testing.assert_close(cache.model.output, net(x))


@pytest.mark.parametrize("remote", [False, "local"])
def test_cache_in_generate_holds_a_list_of_entries_one_per_step(model, hf, tok, remote):
    with model.generate(PROMPT, max_new_tokens=STEPS, remote=remote) as tracer:
        cache = tracer.cache(modules=[model.model.layers[-1]])
    _, seen = generate(hf, tok)
    entries = cache["model.layers.1"]
    assert isinstance(entries, list) and len(entries) == STEPS
    for entry, expected in zip(entries, seen):
        torch.testing.assert_close(entry.output, expected)
    with pytest.raises(AttributeError, match=r"ran 3 times.*cache\['model.model.layers.1'\]\[0\].output"):
        cache.model.layers[1].output


def test_each_steps_entry_holds_that_steps_inputs_and_output(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        cache = tracer.cache(modules=[model.model.layers[0], model.model.layers[1]], include_inputs=True)
    for before, after in zip(cache["model.layers.0"], cache["model.layers.1"], strict=True):
        torch.testing.assert_close(after.input, before.output)  # layer 1 takes what layer 0 gave at the same step
    assert [entry.input.shape[1] for entry in cache["model.layers.1"]][1:] == [1] * (STEPS - 1)


def test_cache_of_a_module_that_ran_once_in_generate_is_one_entry(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=1) as tracer:
        cache = tracer.cache(modules=[model.model.layers[-1]])
    _, seen = generate(hf, tok, steps=1)
    torch.testing.assert_close(cache["model.layers.1"].output, seen[0])
    torch.testing.assert_close(cache.model.layers[1].output, seen[0])
    with pytest.raises(IndexError, match="Index 2 is out of range for 'model.model.layers'"):
        cache.model.layers[2]  # past the end of a list of modules (nnsight's IndexError)


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_gpt2(tok, LAYERS)


def gpt2_outputs(gpt2, tok, *paths):
    """Each module's output on PROMPT, by hand-written forward hooks."""
    seen = {}
    hooks = [gpt2.get_submodule(path).register_forward_hook(lambda m, a, out, path=path: seen.update({path: out}))
             for path in paths]
    try:
        gpt2(**tok(PROMPT, return_tensors="pt"))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("remote", [False, "local"])
def test_cache_modules_by_path_with_nnsights_root_prefix(gpt2, tok, remote):
    model = LanguageModel(gpt2, tokenizer=tok)
    with model.trace(PROMPT, remote=remote) as tracer:
        cache = tracer.cache(modules=[model.transformer.h[0].mlp, "model.lm_head",
                                      "model.transformer.h.1.attn.c_proj", "transformer.ln_f"])
    expected = gpt2_outputs(gpt2, tok, "transformer.h.0.mlp", "lm_head", "transformer.h.1.attn.c_proj",
                            "transformer.ln_f")
    assert set(cache.keys()) == {"model." + path for path in expected}
    for path, out in expected.items():
        torch.testing.assert_close(cache["model." + path].output, out)


def test_cache_modules_by_path_of_a_model_with_a_model_child(model, hf, tok):
    with model.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=["model.layers.0", "model.model.layers.1"])
    assert set(cache.keys()) == {"model.model.layers.0", "model.model.layers.1"}
    with pytest.raises(AttributeError, match="'model' has no submodule 'model'"):
        with model.trace(PROMPT) as tracer:
            tracer.cache(modules=["model.model.model.layers.0"])


def test_cache_lookups_with_an_alias_named_model(gpt2, tok):
    model = LanguageModel(gpt2, tokenizer=tok, rename={".transformer": ["model", "mdl"]})
    with model.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=["model.model.h.0", "mdl.h.1"])
    expected = gpt2_outputs(gpt2, tok, "transformer.h.0", "transformer.h.1")
    assert set(cache.keys()) == {"model." + path for path in expected}
    for key in ("transformer.h.0", "model.transformer.h.0", "model.h.0", "model.model.h.0", "mdl.h.0"):
        torch.testing.assert_close(cache[key].output, expected["transformer.h.0"])
    torch.testing.assert_close(cache.model.model.h[1].output, expected["transformer.h.1"])
    torch.testing.assert_close(cache.model.transformer.h[1].output, expected["transformer.h.1"])


# -- inputs ---------------------------------------------------------------------------------------------
def embeds_of(hf, tok, prompt=PROMPT):
    return hf.model.embed_tokens(tok(prompt, return_tensors="pt").input_ids).detach()


@pytest.mark.parametrize("remote", [False, "local"])
def test_inputs_embeds_with_and_without_a_mask(model, hf, tok, remote):
    embeds = embeds_of(hf, tok)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    with model.trace(inputs_embeds=embeds, remote=remote):
        plain = model.lm_head.output.save()
    with model.trace(inputs_embeds=embeds, attention_mask=mask, remote=remote):
        masked = model.lm_head.output.save()
    expected = hf(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(masked, expected)


def test_inputs_embeds_in_invokes_are_left_padded(model, hf, tok):
    short, long = embeds_of(hf, tok, "Hello"), embeds_of(hf, tok)
    with model.trace() as tracer:
        with tracer.invoke(inputs_embeds=short):
            first = model.lm_head.output[:, -1].save()
        with tracer.invoke(inputs_embeds=long):
            second = model.lm_head.output[:, -1].save()
    torch.testing.assert_close(first, hf(inputs_embeds=short).logits[:, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(second, hf(inputs_embeds=long).logits[:, -1], atol=1e-5, rtol=1e-4)


def test_generate_from_inputs_embeds(model, hf, tok):
    embeds = embeds_of(hf, tok)
    with model.generate(inputs_embeds=embeds, max_new_tokens=STEPS) as tracer:
        output = tracer.result.save()
    expected = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=STEPS, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(output, expected)


def test_chat_messages_use_the_chat_template(model, hf, tok):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Where is the Eiffel Tower?"}]
    with model.trace(messages):
        logits = model.lm_head.output.save()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    torch.testing.assert_close(logits, hf(**tok(text, return_tensors="pt")).logits)
    with model.trace([messages, messages[1:]]):
        both = model.lm_head.output[:, -1].save()
    torch.testing.assert_close(both[0], logits[0, -1])


@pytest.mark.parametrize("scale", [1.0, -1.0])
def test_skip_under_a_condition(tiny, net, x, scale):
    with tiny.trace(x * scale):
        if tiny.layer1.output.sum() > 0:
            tiny.layer2.skip(torch.zeros(1, 2))
        out = tiny.output.save()
    hidden = net.layer1(x * scale)
    torch.testing.assert_close(out, torch.zeros(1, 2) if hidden.sum() > 0 else net.layer2(hidden))


@pytest.mark.parametrize("remote", [False, "local"])
def test_the_streamer_gives_the_prompt_then_one_token_per_step(model, hf, tok, remote):
    with model.generate([PROMPT, "Hello"], max_new_tokens=STEPS, remote=remote) as tracer:
        chunks = nnsight.save([])
        for step in tracer.iter[:STEPS]:
            chunks.append(model.generator.streamer.output)
        ids = tracer.result.save()
    prompt = ids.shape[1] - STEPS  # the ids themselves are checked against transformers' generate above
    assert len(chunks) == STEPS and torch.equal(chunks[0], ids[:, :prompt])
    assert all(torch.equal(chunk, ids[:, prompt + i]) for i, chunk in enumerate(chunks[1:]))


def test_the_users_own_streamer_still_gets_every_chunk(model, hf, tok):
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, ids):
            self.chunks.append(ids)

        def end(self):
            self.ended = True

    mine = Collect()
    with model.generate(PROMPT, max_new_tokens=STEPS, streamer=mine) as tracer:
        ids = tracer.result.save()
    assert mine.ended and len(mine.chunks) == STEPS + 1
    assert torch.equal(torch.cat([mine.chunks[0][0], *mine.chunks[1:]]), ids[0])


def test_a_with_block_over_steps_runs_its_body_per_step_as_nnsight_05(model, hf, tok):
    """`with tracer.all():` / `with tracer.iter[1:3]:` (deprecated in 0.5, still in its tests): a plain list
    appended to in the body gets one item a step, and edits apply at those steps only."""
    with model.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        every, some = [], []
        nnsight.save(every), nnsight.save(some)
        with tracer.all():
            every.append(model.model.layers[-1].output)
        with tracer.iter[1:3]:
            model.model.layers[-1].output[:] = 0
            some.append(model.model.layers[-1].output.clone())
        ids = tracer.result.save()
    expected_ids, seen = generate(hf, tok, edit=zero_at({1, 2}))
    assert torch.equal(ids, expected_ids) and len(every) == STEPS and len(some) == 2
    for got, expected in zip(every, seen):
        torch.testing.assert_close(got, expected)
    assert all(torch.equal(item, torch.zeros_like(item)) for item in some)
