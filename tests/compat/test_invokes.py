"""Invokes as nnsight 0.4 writes them: invoke(scan=), operations before the first invoke, invoker.inputs, keywords."""
import pytest
import torch
from transformers import BatchEncoding

from nnglass import LanguageModel
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def llama(smol_tokenizer):
    return LanguageModel(tiny_llama(smol_tokenizer, 2), tokenizer=smol_tokenizer)


def test_scan_is_the_invokes_option_not_a_model_keyword(tiny, x):
    for scan in (True, False):
        with tiny.trace() as tracer:
            with tracer.invoke(x, scan=scan):
                shape = tiny.layer1.output.shape
                out = tiny.output.save()
        assert shape == (1, 10) and torch.equal(out, tiny._model(x))


def test_generate_with_an_invoke_that_scans(llama):
    with llama.generate(max_new_tokens=2) as generator:
        with generator.invoke("Hello world", scan=True):
            hidden = llama.model.layers[0].output.shape
            ids = llama.generator.output.save()
    prompt = llama.tokenizer("Hello world", return_tensors="pt")
    expected = llama._model.generate(**prompt, max_new_tokens=2, do_sample=False,
                                     pad_token_id=llama.tokenizer.pad_token_id)
    assert hidden == (1, prompt["input_ids"].shape[1], 32) and torch.equal(ids, expected)


def test_operations_before_the_first_invoke_apply_to_the_whole_batch(tiny, net):
    a, b = torch.rand(1, 5), torch.rand(2, 5)
    with tiny.trace() as tracer:
        tiny.layer1.output.requires_grad_(True)  # outside any invoke: every row
        with tracer.invoke(a):
            hidden_a = tiny.layer1.output
            grad_a = hidden_a.grad.save()
        with tracer.invoke(b):
            hidden_b = tiny.layer1.output
            grad_b = hidden_b.grad.save()
            (tiny.output.sum() * 2).backward()  # only b's rows are in the loss
    # by hand: a hook makes layer1's output require grad for the batch of a and b
    handle = net.layer1.register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        hidden = []
        net.layer1.register_forward_hook(lambda m, i, o: hidden.append(o) or o.retain_grad())
        out = net(torch.cat([a, b]))
        (out[1:].sum() * 2).backward()
    finally:
        handle.remove()
        net.layer1._forward_hooks.clear()
    assert torch.equal(grad_a, hidden[0].grad[:1]) and torch.equal(grad_b, hidden[0].grad[1:])
    assert torch.count_nonzero(grad_a) == 0


def test_an_edit_before_the_first_invoke_reaches_every_invoke(tiny, net):
    a, b = torch.rand(1, 5), torch.rand(1, 5)
    with tiny.trace() as tracer:
        tiny.layer1.output[:, 0] = 0
        with tracer.invoke(a):
            out_a = tiny.output.save()
        with tracer.invoke(b):
            out_b = tiny.output.save()
    def zeroed(inputs):
        hidden = net.layer1(inputs)
        hidden[:, 0] = 0
        return net.layer2(hidden)
    assert torch.allclose(out_a, zeroed(a)) and torch.allclose(out_b, zeroed(b))


def test_invoker_inputs_of_a_language_model_have_0_4s_structure(llama):
    with llama.trace("Hello world") as tracer:
        pass_through = llama.lm_head.output.save()
    (encoding,), kwargs = tracer.invoker.inputs
    assert isinstance(encoding, BatchEncoding) and kwargs == {}
    assert torch.equal(encoding["input_ids"], llama.tokenizer("Hello world", return_tensors="pt")["input_ids"])
    assert pass_through.shape[:2] == encoding["input_ids"].shape


def test_invoker_inputs_of_a_plain_model(tiny, x):
    with tiny.trace(x) as tracer:
        out = tiny.output.save()
    assert tracer.invoker.inputs[0][0] is x and tracer.invoker.inputs[1] == {}


def test_invoker_kwargs_is_invoker_args(llama):
    with llama.trace("Hello world, and more", invoker_kwargs={"max_length": 2, "truncation": True}) as tracer:
        logits = llama.lm_head.output.save()
    assert logits.shape[1] == 2
    with pytest.raises(TypeError, match="not both"):
        llama.trace("x", invoker_args={}, invoker_kwargs={})
    with llama.trace("Hello", invoker_kwargs={}):
        ok = llama.lm_head.output.save()
    assert ok.shape[0] == 1


@pytest.mark.parametrize("keyword", [{"debug": True}, {"blocking": True}])
def test_library_keywords_never_reach_the_model(tiny, x, llama, keyword):
    with tiny.trace(x, **keyword):
        out = tiny.output.save()
    assert torch.equal(out, tiny._model(x))
    with llama.trace("Hello", **keyword) as tracer:
        logits = llama.lm_head.output.save()
    assert tracer.call_kwargs == {}
    with llama.generate("Hello", max_new_tokens=1, **keyword) as tracer:
        ids = llama.generator.output.save()
    assert tracer.call_kwargs == {"max_new_tokens": 1} and ids.shape[1] == 2


def test_blocking_false_needs_a_server(tiny, x):
    for run in (lambda: tiny.trace(x, blocking=False), lambda: tiny.trace(x, remote="local", blocking=False),
                lambda: tiny.trace(x, trace=False, remote=True, blocking=False)):
        with pytest.raises(TypeError, match="blocking=False sends the run to a server"):
            run()


def test_a_keyword_the_forward_cannot_take_is_a_clear_error(llama):
    with pytest.raises(TypeError, match="takes no keyword argument 'frobnicate'"):
        llama.trace("Hello", frobnicate=True)
    with llama.trace("Hello", output_hidden_states=True, use_cache=False):
        out = llama.output.save()
    assert len(out.hidden_states) == 3  # the embeddings and two layers


def test_a_keyword_a_plain_forward_cannot_take_names_the_module(tiny, x):
    with pytest.raises(TypeError, match="unexpected keyword argument 'frobnicate'"):
        with tiny.trace(x, frobnicate=True):
            tiny.output.save()
    with tiny.trace(x):
        out = tiny.output.save()
    assert torch.equal(out, tiny._model(x))
