"""Batched activation patching and attribution patching (0.4's tutorials) against the plain model with hooks."""
import pytest
import torch

from nnglass import LanguageModel
from tests.conftest import tiny_llama

CLEAN, CORRUPTED = "The cat sat on the mat", "The dog ran on the mat"


@pytest.fixture(scope="module")
def llama(smol_tokenizer):
    return LanguageModel(tiny_llama(smol_tokenizer, 3), tokenizer=smol_tokenizer)


def ids(llama, prompt):
    return llama.tokenizer(prompt, return_tensors="pt")


def eager(llama, prompt, layer, replace=None):
    """(logits, layer output) of one prompt alone; `replace(output)` edits the layer's output."""
    seen = []

    def hook(module, args, output):
        seen.append(output)
        return None if replace is None else replace(output)
    handle = llama._model.model.layers[layer].register_forward_hook(hook)
    try:
        logits = llama._model(**ids(llama, prompt)).logits
    finally:
        handle.remove()
    return logits, seen[0]


def test_prompts_have_the_same_length(llama):
    assert ids(llama, CLEAN)["input_ids"].shape == ids(llama, CORRUPTED)["input_ids"].shape


@pytest.mark.parametrize("layer", [0, 2])
def test_batched_activation_patching(llama, layer):
    position = 2
    with torch.no_grad():
        with llama.trace() as tracer:
            with tracer.invoke(CLEAN):
                clean_hidden = llama.model.layers[layer].output
                clean_logits = llama.lm_head.output.save()
            with tracer.invoke(CORRUPTED):
                llama.model.layers[layer].output[:, position] = clean_hidden[:, position]
                patched_logits = llama.lm_head.output.save()
        expected_clean, hidden = eager(llama, CLEAN, layer)

        def patch(output):
            output = output.clone()
            output[:, position] = hidden[:, position]
            return output
        expected_patched, _ = eager(llama, CORRUPTED, layer, patch)
    torch.testing.assert_close(clean_logits.value, expected_clean)
    torch.testing.assert_close(patched_logits.value, expected_patched)


def test_batched_attribution_patching(llama):
    answer, wrong = (llama.tokenizer.encode(word)[0] for word in (" mat", " hat"))
    layers = range(3)
    with llama.trace() as tracer:
        with tracer.invoke(CLEAN):
            clean = [llama.model.layers[i].output.save() for i in layers]
        with tracer.invoke(CORRUPTED):
            corrupted = [llama.model.layers[i].output.save() for i in layers]
            grads = [llama.model.layers[i].output.grad.save() for i in layers]
            logits = llama.lm_head.output
            (logits[:, -1, answer] - logits[:, -1, wrong]).sum().backward()
    # by hand: the corrupted prompt alone, gradients of the same metric at each layer's output
    outputs = []
    handles = [llama._model.model.layers[i].register_forward_hook(lambda m, a, o: outputs.append(o)) for i in layers]
    try:
        eager_logits = llama._model(**ids(llama, CORRUPTED)).logits
    finally:
        for handle in handles:
            handle.remove()
    metric = (eager_logits[:, -1, answer] - eager_logits[:, -1, wrong]).sum()
    expected_grads = torch.autograd.grad(metric, outputs)
    with torch.no_grad():
        expected_clean = [eager(llama, CLEAN, i)[1] for i in layers]
    for i in layers:
        torch.testing.assert_close(grads[i].value, expected_grads[i])
        torch.testing.assert_close(corrupted[i].value, outputs[i].detach())
        torch.testing.assert_close(clean[i].value, expected_clean[i])
        attribution = ((clean[i].value - corrupted[i].value) * grads[i].value).sum()
        expected = ((expected_clean[i] - outputs[i].detach()) * expected_grads[i]).sum()
        torch.testing.assert_close(attribution, expected)
