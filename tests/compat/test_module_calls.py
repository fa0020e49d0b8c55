"""Ad-hoc module calls with hook=True, and `.all()` over a module's children and as a context manager."""
import pytest
import torch

from nnglass import LanguageModel
from tests.conftest import tiny_gpt2, tiny_llama


def test_an_ad_hoc_call_with_hook_true_is_one_of_the_modules_calls(tiny, net, x):
    with tiny.trace(x):
        tiny.layer2.output[:] = 0                          # call 0: the ad-hoc call (it runs inside layer1's hook)
        adhoc = tiny.layer2(tiny.layer1.output * 2, hook=True).save()
        model_out = tiny.layer2.next().output.save()      # call 1: the model's own call
    assert torch.count_nonzero(adhoc) == 0 and torch.equal(model_out, net(x))


def test_without_hook_the_graphs_hooks_stand_aside(tiny, net, x):
    with tiny.trace(x):
        tiny.layer2.output[:] = 0
        adhoc = tiny.layer2(tiny.layer1.output * 2).save()
        model_out = tiny.layer2.output.save()
    assert torch.equal(adhoc, net.layer2(net.layer1(x) * 2)) and torch.count_nonzero(model_out) == 0


def test_hook_true_runs_the_modules_own_torch_hooks(tiny, net, x):
    seen = []
    handle = net.layer2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with tiny.trace(x):
            tiny.layer2(tiny.layer1.output, hook=True)
    finally:
        handle.remove()
    assert seen == [(1, 2), (1, 2)]  # the ad-hoc call and the model's


@pytest.fixture(scope="module")
def llama(smol_tokenizer):
    return LanguageModel(tiny_llama(smol_tokenizer, 2), tokenizer=smol_tokenizer)


def eager_steps(llama, prompt, steps):
    """Each generation step's output of layer 0's mlp, by a hand-written hook."""
    seen = []
    mlp = llama._model.model.layers[0].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        llama._model.generate(**llama.tokenizer(prompt, return_tensors="pt"), max_new_tokens=steps,
                              do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
    finally:
        handle.remove()
    return seen


def test_all_applies_to_the_module_and_its_children(llama):
    with llama.generate("Hello", max_new_tokens=3):
        llama.model.layers[0].all()
        steps = llama.model.layers[0].mlp.output.shape  # noqa: F841 (a read at every call)
        seen = llama.model.layers[0].mlp.output.save()  # the latest call: the last step
    assert torch.equal(seen, eager_steps(llama, "Hello", 3)[-1])


def test_all_as_a_context_manager_around_invokes_of_a_generate(llama):
    with llama.generate(max_new_tokens=3) as generator:
        with llama.all():
            with generator.invoke("Hello"):
                outputs = llama.model.layers[0].mlp.output.save()
                llama.model.layers[0].mlp.output[:] = 0
                ids = llama.generator.output.save()
            with generator.invoke("The cat"):
                other = llama.model.layers[0].mlp.output.save()
        first = llama.model.layers[0].mlp.output.save()  # after the block: the first call again
    assert torch.count_nonzero(outputs) == 0  # zeroed at every step
    assert other.shape[0] == 1 and torch.count_nonzero(other) > 0
    assert first.shape[0] == 2
    mlp = llama._model.model.layers[0].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        expected = llama._model.generate(**llama.tokenizer("Hello", return_tensors="pt"), max_new_tokens=3,
                                         do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
    finally:
        handle.remove()
    assert torch.equal(ids[:, -expected.shape[1]:], expected)


class SAE(torch.nn.Module):
    """A stand-in sparse autoencoder, as nnsight's docs write it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.encoder = torch.nn.Linear(width, 4 * width)
        self.decoder = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(x)))


def test_a_module_attached_after_wrapping_called_with_hook_true(tiny, net, x):
    sae = SAE(10).requires_grad_(False)
    tiny.layer1._module.add_module("sae", sae)
    with tiny.trace(x):
        tiny.layer1.output = tiny.layer1.sae(tiny.layer1.output, hook=True)
        acts = tiny.layer1.sae.encoder.output.save()
        out = tiny.output.save()
    hidden = net.layer1(x)
    torch.testing.assert_close(acts, sae.encoder(hidden))
    torch.testing.assert_close(out, net.layer2(sae(hidden)))


def test_without_hook_an_attached_module_just_runs(tiny, net, x):
    sae = SAE(10).requires_grad_(False)
    tiny.layer1._module.add_module("sae", sae)
    with tiny.trace(x):
        recon = tiny.layer1.sae(tiny.layer1.output).save()
    torch.testing.assert_close(recon, sae(net.layer1(x)))
    torch.testing.assert_close(tiny.layer1.sae(net.layer1(x), hook=True), sae(net.layer1(x)))  # outside a trace


def test_an_attached_sae_read_from_another_invoke(smol_tokenizer):
    gpt2 = tiny_gpt2(smol_tokenizer, 2)
    model = LanguageModel(gpt2, tokenizer=smol_tokenizer)
    sae = SAE(32).eval()
    model.transformer.h[1].mlp._module.add_module("sae", sae)
    with model.trace() as tracer:
        with tracer.invoke("The Eiffel Tower is in"):
            mlp = model.transformer.h[1].mlp
            mlp.output = mlp.sae(mlp.output, hook=True)
        with tracer.invoke():
            features = model.transformer.h[1].mlp.sae.encoder.output.save()
            logits = model.lm_head.output.save()
    seen = []
    handle = gpt2.transformer.h[1].mlp.register_forward_hook(
        lambda m, a, out: seen.append(sae.encoder(out)) or sae(out))
    try:
        expected = gpt2(**smol_tokenizer("The Eiffel Tower is in", return_tensors="pt")).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(features, seen[0])
