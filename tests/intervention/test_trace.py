"""Trace: a scan-only trace (`model.scan`) leaves fake values behind, shaped like plain torch's."""
import torch

from nnglass import LanguageModel
from nnglass.tracing.walk import leaves
from tests.conftest import tiny_llama


def shapes(value):
    """The shapes of the tensors in value."""
    return [leaf.shape for leaf in leaves(value) if isinstance(leaf, torch.Tensor)]


def test_a_scan_saves_fake_values_shaped_like_the_eager_ones(tiny, net, x):
    batch = x.repeat(3, 1)
    with tiny.scan(batch):
        last = tiny.layer2.output[:, -1].save()
    expected = net(batch)[:, -1]
    assert last.shape == expected.shape and last.dtype == expected.dtype
    assert last.value.shape == expected.shape


def test_a_cache_in_a_scan_holds_fake_entries_shaped_like_the_eager_ones(tiny, net, x):
    with tiny.scan(x) as tracer:
        cache = tracer.cache(include_inputs=True)
    assert cache["layer1"].output.shape == net.layer1(x).shape
    assert cache["layer2"].output.shape == net(x).shape
    assert cache["layer2"].input.shape == net.layer1(x).shape


def test_a_language_model_scan_gives_the_last_logits_and_cached_layers_shapes(tok):
    hf = tiny_llama(tok, 2)
    model = LanguageModel(hf, tokenizer=tok)
    with model.scan("Hello world, again") as tracer:
        last_logits = model.lm_head.output[:, -1].save()
        cache = tracer.cache()
    with torch.no_grad():
        out = hf(**tok("Hello world, again", return_tensors="pt"), output_hidden_states=True)
    assert last_logits.shape == out.logits[:, -1].shape
    assert cache["model.layers.0"].output.shape == out.hidden_states[1].shape
    with model.trace("Hello world, again") as tracer:
        real = tracer.cache()
    assert set(cache) == set(real)
    assert all(shapes(cache[path].output) == shapes(real[path].output) for path in real)
