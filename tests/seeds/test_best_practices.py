"""The best-practices page (seed 002), example by example, on a tiny 8-layer Llama with random weights.

nnglass runs interventions in dataflow order, so the page's "must access in order" rule does not apply:
its INCORRECT examples run here, and give the right values.
"""
import pytest
import torch

import nnglass as nnsight
from nnglass.modeling.standard import StandardizedTransformer
from tests.conftest import tiny_llama

PROMPT = "My tailor is rich"
LAYERS = 8


@pytest.fixture(scope="module")
def hf(tok):
    return tiny_llama(tok, LAYERS)


@pytest.fixture(scope="module")
def model(hf, tok):
    return StandardizedTransformer(hf, tokenizer=tok)


def eager(hf, tok, prompt: str = PROMPT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A plain run: logits, and the main output of every layer, attention and MLP by module path."""
    seen, handles = {}, []
    for path, module in hf.named_modules():
        if path.startswith("model.layers.") and path.count(".") <= 3:
            handles.append(module.register_forward_hook(
                lambda m, a, out, path=path: seen.__setitem__(path, out[0] if isinstance(out, tuple) else out)))
    try:
        logits = hf(**tok(prompt, return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


def close(actual, expected) -> None:
    torch.testing.assert_close(actual.value if isinstance(actual, nnsight.Proxy) else actual, expected)


# -- Execution Order Requirements ------------------------------------------------------------------------------
def test_forward_order_access(model, hf, tok):
    with model.trace("My tailor is rich"):
        l1 = model.layers_output[1].save()  # Access layer 1 first
        l2 = model.layers_output[2].save()  # Then layer 2
        logits = model.logits.save()        # Finally the output
    expected_logits, seen = eager(hf, tok)
    close(l1, seen["model.layers.1"])
    close(l2, seen["model.layers.2"])
    close(logits, expected_logits)


def test_the_incorrect_order_example_runs_and_is_right(model, hf, tok, capsys):
    try:
        with model.trace("My tailor is rich"):
            l2 = model.layers_output[2]  # Access layer 2 first
            l1 = model.layers_output[1]  # Then layer 1 - no error in nnglass
    except Exception as e:
        print(f"Error: {e}")
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="before it's been set"):  # not saved: freed after the trace
        l2.value
    with model.trace("My tailor is rich"):
        l2 = model.layers_output[2].save()
        l1 = model.layers_output[1].save()
    _, seen = eager(hf, tok)
    close(l2, seen["model.layers.2"])
    close(l1, seen["model.layers.1"])


def test_all_components_in_forward_order(model, hf, tok):
    with model.trace("Hello"):
        attn_0 = model.attentions_output[0].save()  # Layer 0 attention
        mlp_0 = model.mlps_output[0].save()         # Layer 0 MLP
        layer_0 = model.layers_output[0].save()     # Layer 0 output
        attn_1 = model.attentions_output[1].save()  # Layer 1 attention
    _, seen = eager(hf, tok, "Hello")
    close(attn_0, seen["model.layers.0.self_attn"])
    close(mlp_0, seen["model.layers.0.mlp"])
    close(layer_0, seen["model.layers.0"])
    close(attn_1, seen["model.layers.1.self_attn"])


# -- Gradient Computation -----------------------------------------------------------------------------------------
def test_basic_gradient_computation(model, hf, tok):
    with model.trace("My tailor is rich"):
        l1_out = model.layers_output[1]  # Save the activation you want gradients for
        logits = model.output.logits     # Access model output (must be after l1_out)
        with logits.sum().backward():    # Compute gradients inside backward context
            l1_grad = l1_out.grad.save()
    expected_logits, seen = eager(hf, tok)
    (expected,) = torch.autograd.grad(expected_logits.sum(), seen["model.layers.1"])
    close(l1_grad, expected)


def test_multiple_backward_passes(model, hf, tok):
    with model.trace("My tailor is rich"):
        l1_out = model.layers_output[1]
        logits = model.output.logits
        with logits.sum().backward(retain_graph=True):  # First backward pass
            l1_grad_1 = l1_out.grad.save()
        with (logits.sum() ** 2).backward():           # Second backward pass with different objective
            l1_grad_2 = l1_out.grad.save()
    assert not torch.allclose(l1_grad_1, l1_grad_2)    # Gradients will be different
    expected_logits, seen = eager(hf, tok)
    first = torch.autograd.grad(expected_logits.sum(), seen["model.layers.1"], retain_graph=True)[0]
    second = torch.autograd.grad(expected_logits.sum() ** 2, seen["model.layers.1"])[0]
    close(l1_grad_1, first)
    close(l1_grad_2, second)


def test_gradient_of_a_layer_first_read_inside_backward(model, hf, tok):
    """The page's INCORRECT example (layer read after the logits, inside backward) works here too."""
    with model.trace("My tailor is rich"):
        logits = model.logits
        with logits.sum().backward():
            l1_grad = model.layers_output[1].grad.save()
    expected_logits, seen = eager(hf, tok)
    close(l1_grad, torch.autograd.grad(expected_logits.sum(), seen["model.layers.1"])[0])


def test_gradient_of_an_activation_saved_first(model, hf, tok):
    with model.trace("My tailor is rich"):
        l1_out = model.layers_output[1]  # Save first
        logits = model.logits
        with logits.sum().backward():
            l1_grad = l1_out.grad.save()  # Use saved activation
    expected_logits, seen = eager(hf, tok)
    close(l1_grad, torch.autograd.grad(expected_logits.sum(), seen["model.layers.1"])[0])


# -- Performance Optimization ----------------------------------------------------------------------------------------
def test_tracer_stop_skips_the_layers_after_5(model, hf, tok):
    runs = [0] * LAYERS
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, layer in enumerate(hf.model.layers)]
    try:
        for _ in range(2):  # Without tracer.stop() - computes all layers
            with model.trace("Hello world"):
                full = model.layers_output[5].save()
        assert runs == [2] * LAYERS
        for _ in range(2):  # With tracer.stop() - only computes up to layer 5
            with model.trace("Hello world") as tracer:
                layer_5_out = model.layers_output[5].save()
                tracer.stop()  # Stop here - don't compute remaining layers
    finally:
        for handle in handles:
            handle.remove()
    assert runs == [4] * 6 + [2] * (LAYERS - 6)
    close(layer_5_out, full.value)
    close(layer_5_out, eager(hf, tok, "Hello world")[1]["model.layers.5"])


# -- Caching Activations ---------------------------------------------------------------------------------------------
def test_cache_every_other_layer_keyed_by_original_names(model, hf, tok):
    with model.trace("Hello world") as tracer:
        cache = tracer.cache(  # Cache every other layer
            modules=[model.layers[i] for i in range(0, model.num_layers, 2)]
        ).save()
    assert list(cache.keys()) == [f"model.model.layers.{i}" for i in (0, 2, 4, 6)]  # nnsight's keys
    tokens = tok("Hello world", return_tensors="pt").input_ids.shape[1]
    assert cache["model.layers.0"].output.shape == (1, tokens, 32)  # Layer 0 output
    assert cache["model.layers.2"].output.shape == (1, tokens, 32)  # Layer 2 output
    _, seen = eager(hf, tok, "Hello world")
    for key, entry in cache.items():  # keys are nnsight's envoy paths: the root `model`, then the module path
        close(entry.output, seen[key.removeprefix("model.")])
