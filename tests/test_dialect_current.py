"""nnsight 0.5+'s dialect, written the way its current docs write it (saving, conditionals, loops, printing),
on a tiny Llama with random weights (its decoder layers return a tensor); every value against the plain model with hand-written hooks."""
import pickle

import pytest
import torch

import nnglass as nnsight
from nnglass import LanguageModel
from tests.conftest import tiny_llama
from tests.modeling.test_standard import PROMPT, run_eager

LAYERS = 3


@pytest.fixture(scope="module")
def hf(tok):
    return tiny_llama(tok, LAYERS)


@pytest.fixture(scope="module")
def model(hf, tok):
    return LanguageModel(hf, tokenizer=tok)


def eager(hf, tok, edits=None):
    """Logits and each layer's hidden states; edits: {layer: fn(hidden) -> hidden} applied by forward hooks."""
    layer = "model.layers.{}".format
    logits, seen = run_eager(hf, tok, {(layer(i), "output"): fn for i, fn in (edits or {}).items()})
    return logits, {i: seen[(layer(i), "output")] for i in range(len(hf.model.layers))}


def test_any_value_has_a_save_as_nnsight_mounts_on_every_object(model, hf, tok):
    with model.trace(PROMPT):
        hidden_states = list().save()
        for i in range(LAYERS):
            hidden_states.append(model.model.layers[i].output)
        by_name = {}.save()
        by_name["logits"] = model.lm_head.output
        width = model.model.layers[0].output.shape[-1].save()
    expected_logits, seen = eager(hf, tok)
    assert width == hf.config.hidden_size and len(hidden_states) == LAYERS
    for got, expected in zip(hidden_states, seen.values()):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(by_name["logits"], expected_logits)


def test_save_of_a_list_named_earlier_in_a_straight_block(model, hf, tok):
    with model.trace(PROMPT):
        last = []
        last.save()
        last.append(model.model.layers[-1].output)
    torch.testing.assert_close(last[0], eager(hf, tok)[1][LAYERS - 1])


def test_a_slice_of_a_module_list_is_a_list_of_envoys(model, hf, tok):
    assert model.model.layers[:2] == [model.model.layers[0], model.model.layers[1]]
    with model.trace(PROMPT):
        outs = [layer.output.save() for layer in model.model.layers[-2:]]
    seen = eager(hf, tok)[1]
    for got, want in zip(outs, [seen[LAYERS - 2], seen[LAYERS - 1]]):
        torch.testing.assert_close(got, want)


def test_a_list_from_outside_filled_inside_holds_real_values(model, hf, tok):
    acts = []  # nnsight's docs: no .save() needed, the list itself lives outside the trace
    with model.trace() as tracer:
        for _ in range(2):
            with tracer.invoke(PROMPT):
                acts.append(model.model.layers[0].output[:, -1, :])
    expected = eager(hf, tok)[1][0][:, -1, :]
    assert len(acts) == 2 and all(isinstance(a, torch.Tensor) for a in acts)
    for got in acts:
        torch.testing.assert_close(got, expected)


def test_saving_gives_real_tensors(model, hf, tok):
    with model.trace(PROMPT):
        hidden_states = model.model.layers[-1].output.save()
        logits = nnsight.save(model.lm_head.output)
    expected_logits, seen = eager(hf, tok)
    assert isinstance(hidden_states, torch.Tensor) and isinstance(logits, torch.Tensor)
    torch.testing.assert_close(hidden_states, seen[LAYERS - 1])
    torch.testing.assert_close(pickle.loads(pickle.dumps(logits)), expected_logits)
    assert model.tokenizer.decode(logits[0, -1].argmax()) == tok.decode(expected_logits[0, -1].argmax())


def test_conditional_on_an_activation(model, hf, tok, capsys):
    norm = eager(hf, tok)[1][0].norm().item()
    for threshold in (norm - 1, norm + 1):
        with model.trace(PROMPT):
            if model.model.layers[0].output.norm() > threshold:
                model.model.layers[1].output[:] = 0
                print("big norm")
            else:
                print("small norm")
            logits = model.lm_head.output.save()
        edits = {1: lambda h: h * 0} if norm > threshold else None
        torch.testing.assert_close(logits, eager(hf, tok, edits)[0])
    assert capsys.readouterr().out == "big norm\nsmall norm\n"


def test_loop_over_layers_collects_every_hidden_state(model, hf, tok):
    with model.trace(PROMPT):
        layer_outputs = []
        for layer in model.model.layers:
            layer_outputs.append(layer.output.save())
    _, seen = eager(hf, tok)
    assert len(layer_outputs) == LAYERS
    for index, hidden in enumerate(layer_outputs):
        torch.testing.assert_close(hidden, seen[index])


def test_logit_lens_with_range_and_decode(model, hf, tok):
    with model.trace(PROMPT):
        tokens = []
        for i in range(LAYERS):
            hidden = model.model.layers[i].output
            tokens.append(model.lm_head(model.model.norm(hidden)).argmax(dim=-1).save())
    _, seen = eager(hf, tok)
    for i in range(LAYERS):
        expected = hf.lm_head(hf.model.norm(seen[i])).argmax(dim=-1)
        assert model.tokenizer.batch_decode(tokens[i][0]) == tok.batch_decode(expected[0])


def test_loop_with_edits_and_skipped_layers(model, hf, tok):
    with model.trace(PROMPT):
        for i in range(LAYERS):
            if i == 1:
                continue
            model.model.layers[i].output[:, -1] = 0
        logits = model.lm_head.output.save()

    def zero_last(hidden):
        hidden = hidden.clone()
        hidden[:, -1] = 0
        return hidden
    torch.testing.assert_close(logits, eager(hf, tok, {0: zero_last, 2: zero_last})[0])


def test_print_shows_values_when_the_model_runs(model, hf, tok, capsys):
    with model.trace(PROMPT):
        norm = model.model.layers[0].output.norm()
        print("layer 0 norm:", norm)
        print(f"layer 0 norm: {norm:.4f}")
    expected = eager(hf, tok)[1][0].norm()
    assert capsys.readouterr().out == f"layer 0 norm: {expected!s}\nlayer 0 norm: {expected:.4f}\n"


def test_generate_and_batch_decode(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=3, do_sample=False):
        output = model.generator.output.save()
    expected = hf.generate(**tok(PROMPT, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert isinstance(output, torch.Tensor)
    assert model.tokenizer.batch_decode(output) == tok.batch_decode(expected)


def test_session_with_plain_lists_and_loops(model, hf, tok):
    with model.session():
        results = []
        for scale in (0, 2):
            with model.trace(PROMPT):
                model.model.layers[1].output[:] *= scale
                results.append(model.lm_head.output.save())
    for scale, logits in zip((0, 2), results):
        torch.testing.assert_close(logits, eager(hf, tok, {1: lambda h: h * scale})[0])


def test_generate_with_a_conditional_edit_on_the_first_step(model, hf, tok):
    prompt = tok(PROMPT, return_tensors="pt")
    norm = eager(hf, tok)[1][0].norm().item()
    for threshold in (norm - 1, norm + 1):
        with model.generate(PROMPT, max_new_tokens=3, do_sample=False):
            if model.model.layers[0].output.norm() > threshold:
                model.model.layers[1].output[:] = 0
            output = model.generator.output.save()
        calls = []

        def first_call_zeroed(module, args, out):
            calls.append(1)
            return out * 0 if len(calls) == 1 else out
        handle = hf.model.layers[1].register_forward_hook(first_call_zeroed) if norm > threshold else None
        try:
            expected = hf.generate(**prompt, max_new_tokens=3, do_sample=False)
        finally:
            if handle is not None:
                handle.remove()
        assert torch.equal(output, expected)


def test_modules_lists_envoys_with_nnsight_paths(model, hf, tok):
    paths = [m.path for m in model.modules()]
    expected = [f"model.{n}" if n else "model" for n, _ in hf.named_modules()]
    expected += ["model.generator", "model.generator.streamer"]  # generate's hook points
    assert sorted(paths) == sorted(expected)
    assert paths[-1] == "model"  # children first, the root last
    linears = model.modules(include_fn=lambda m: isinstance(m._module, torch.nn.Linear))
    assert [p for p, _ in model.named_modules(lambda m: m in linears)] == [m.path for m in linears]
    with model.trace(PROMPT):
        head = linears[-1].output.save()
    torch.testing.assert_close(head, eager(hf, tok)[0])


def test_wrapper_conveniences_of_nnsight(tok):
    from nnglass.util import WrapperModule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2))
    model = nnsight.NNsight(net).to("cpu")  # the wrapper, not the module
    x = torch.rand(2, 5)
    model[0].probe = WrapperModule()  # attached to the module, with an envoy of its own
    with model.trace(x):
        model[0].probe(model[0].output, hook=True)
        copy = model[0].probe.output.save()
    torch.testing.assert_close(copy, net[0](x))
    with pytest.raises(ValueError, match="Nothing to run"):
        with model.trace():
            pass
    with pytest.raises(ValueError, match="zero tokens"):
        LanguageModel(tiny_llama(tok, 1), tokenizer=tok).trace("", trace=False)


class Thrice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.layer(self.layer(self.layer(x)))


def test_a_bounded_step_slice_in_a_trace_addresses_each_call_of_a_module():
    torch.manual_seed(0)
    net, x = Thrice(), torch.rand(1, 4)
    model = nnsight.NNsight(net)
    with model.trace(x) as tracer:
        calls = list().save()
        for step in tracer.iter[:3]:
            calls.append(model.layer.output)
    expected = [net.layer(x)]
    for _ in range(2):
        expected.append(net.layer(expected[-1]))
    assert len(calls) == 3
    for got, want in zip(calls, expected):
        torch.testing.assert_close(got, want)


def test_with_tracer_iter_all_and_membership_of_a_saved_cache(model, hf, tok):
    with model.generate(PROMPT, max_new_tokens=2) as tracer:
        with tracer.iter[:]:  # nnsight 0.4: the body applies at every step
            model.model.layers[0].output[:] = 0
        cache = tracer.cache(modules=[model.model.layers[1]])
        ids = tracer.result.save()
    assert "model.layers.1" in cache and "model.model.layers.1" in cache
    assert cache["model.layers.1"][0].input is None  # inputs were not cached
    expected = hf.generate(**tok(PROMPT, return_tensors="pt"), max_new_tokens=2, do_sample=False,
                           pad_token_id=tok.eos_token_id)
    assert ids.shape == expected.shape
    with model.generate(PROMPT, max_new_tokens=2) as tracer:
        with tracer.all():
            model.model.layers[0].output[:] = 0
        same = tracer.result.save()
    assert torch.equal(ids, same)  # as `with tracer.all():`, checked against hooks in test_dialect_steps
