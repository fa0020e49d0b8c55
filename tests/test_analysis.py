"""Analysis helpers: logit lens on SmolLM2; steering and activation patching checked against plain torch hooks."""
import matplotlib.image
import pytest
import torch

from nnglass.analysis import (IDENTITY_PROMPT, attention_pattern, attribution_patching, logit_lens,
                              patch_activations, patchscope, steer)
from nnglass.modeling.standard import StandardizedTransformer
from nnglass.models import smollm2_path
from nnglass.remote import allowlist
from tests.conftest import tiny_llama

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"  # as many tokens as CLEAN
PARIS = 7042  # " Paris" in the SmolLM2 tokenizer


@pytest.fixture(scope="module")
def hf(tok):
    return tiny_llama(tok, 3)


@pytest.fixture(scope="module")
def tiny(hf, tok):
    return StandardizedTransformer(hf, tokenizer=tok)


@pytest.fixture
def traces(tiny, monkeypatch):
    """Every tracer the helpers open on the tiny model, to inspect their graphs afterwards."""
    opened = []
    trace = tiny.trace

    def recording(*args, **kwargs):
        opened.append(trace(*args, **kwargs))
        return opened[-1]
    monkeypatch.setattr(tiny, "trace", recording)
    return opened


def graph_functions_are_wire_safe(tracers) -> None:
    """Every function the helpers put in a graph can run on a server (the remote allow-list)."""
    assert tracers
    for tracer in tracers:
        for node in tracer.graph.nodes:
            if node.op == "call_function":
                allowlist.name_of(node.target)


def run_hooked(hf, tok, prompt: str, layer: int, edit) -> torch.Tensor:
    """Logits of a plain run whose layer output [batch, tokens, hidden] is replaced by edit(output)."""
    handle = hf.model.layers[layer].register_forward_hook(lambda m, a, out: edit(out))
    try:
        with torch.no_grad():
            return hf(**tok(prompt, return_tensors="pt")).logits
    finally:
        handle.remove()


# -- logit lens ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    return StandardizedTransformer(str(smollm2_path()))


def test_logit_lens_on_smollm2_ends_in_paris(smol, tmp_path):
    lens = logit_lens(smol, CLEAN, top_k=3)
    positions = len(lens.input_tokens)
    assert lens.input_tokens[-1] == " of" and positions == 9
    assert len(lens.tokens) == smol.num_layers == 30 and all(len(row) == positions for row in lens.tokens)
    assert lens.probs.shape == (30, positions) and lens.top_probs.shape == (30, positions, 3)
    assert lens.tokens[-1][-1] == " Paris" and lens.top_ids[-1, -1, 0] == PARIS
    assert (lens.top_probs[..., :-1] >= lens.top_probs[..., 1:]).all() and (lens.probs <= 1).all()
    path = lens.plot(tmp_path / "lens.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 600 and pixels.shape[1] > 600  # room for 30 x 9 labelled cells
    assert pixels[..., :3].std() > 0.1


def test_logit_lens_equals_decoding_by_hand(smol, tok):
    lens = logit_lens(smol, CLEAN)
    hf = smol._model
    kept = {}
    handle = hf.model.layers[10].register_forward_hook(lambda m, a, out: kept.__setitem__("h", out))
    try:
        with torch.no_grad():
            final = hf(**tok(CLEAN, return_tensors="pt")).logits[0].softmax(-1)  # [tokens, vocab]
            middle = hf.lm_head(hf.model.norm(kept["h"]))[0].softmax(-1)
    finally:
        handle.remove()
    torch.testing.assert_close(lens.probs[-1], final.max(-1).values)  # the last layer decodes to the output
    torch.testing.assert_close(lens.probs[10], middle.max(-1).values)
    assert lens.top_ids[10, :, 0].tolist() == middle.argmax(-1).tolist()


# -- steering -----------------------------------------------------------------------------------------------------
def test_steer_equals_adding_the_vector_by_hand(tiny, hf, tok, traces):
    torch.manual_seed(1)
    vector = torch.randn(32)
    logits = steer(tiny, CLEAN, vector, layers=[0, 2], positions=[1, 3], scale=2.5)

    def add(out):
        out = out.clone()
        out[:, [1, 3]] += 2.5 * vector
        return out
    handle = hf.model.layers[0].register_forward_hook(lambda m, a, out: add(out))
    try:
        expected = run_hooked(hf, tok, CLEAN, 2, add)
    finally:
        handle.remove()
    torch.testing.assert_close(logits, expected)
    everywhere = steer(tiny, CLEAN, vector, layers=1)
    torch.testing.assert_close(everywhere, run_hooked(hf, tok, CLEAN, 1, lambda out: out + vector))
    assert not torch.allclose(everywhere, run_hooked(hf, tok, CLEAN, 1, lambda out: out))
    graph_functions_are_wire_safe(traces)


# -- activation patching -------------------------------------------------------------------------------------------
def test_patching_the_last_layer_moves_only_the_last_position(tiny, traces, tmp_path):
    result = patch_activations(tiny, CLEAN, CORRUPTED)
    assert result.effect.shape == (3, 9) and result.layers == [0, 1, 2] and result.positions == list(range(9))
    torch.testing.assert_close(result.effect[-1, -1], torch.tensor(1.0))
    torch.testing.assert_close(result.effect[-1, :-1], torch.zeros(8))  # earlier positions never reach it
    assert len(traces) == 1 + 3  # the baselines, then one trace per layer
    graph_functions_are_wire_safe(traces)
    assert matplotlib.image.imread(result.plot(tmp_path / "patch.png"))[..., :3].std() > 0.05


def probability_of_paris(logits: torch.Tensor) -> torch.Tensor:
    """A custom metric: logits [batch, tokens, vocab] -> probability of " Paris" next [batch]."""
    return logits[:, -1].softmax(-1)[:, PARIS]


@pytest.mark.parametrize("metric", [None, probability_of_paris])
def test_one_patched_cell_equals_a_patch_by_hand(tiny, hf, tok, metric):
    layer, position = 1, 4
    result = patch_activations(tiny, CLEAN, CORRUPTED, layers=[layer], positions=[2, position], metric=metric)
    kept = {}
    clean = run_hooked(hf, tok, CLEAN, layer, lambda out: kept.__setitem__("h", out))
    corrupted = run_hooked(hf, tok, CORRUPTED, layer, lambda out: None)

    def patch(out):
        out = out.clone()
        out[:, position] = kept["h"][:, position]
        return out
    patched = run_hooked(hf, tok, CORRUPTED, layer, patch)
    if metric is None:  # the default: the logit of the clean run's answer at the last position
        answer = clean[0, -1].argmax()
        metric = lambda logits: logits[:, -1, answer]  # noqa: E731
    expected = (metric(patched) - metric(corrupted)) / (metric(clean) - metric(corrupted))
    torch.testing.assert_close(result.effect[0, 1:], expected, atol=1e-4, rtol=1e-4)  # a ratio of differences of batched runs
    assert result.effect.shape == (1, 2) and result.input_tokens[1] == tok.decode(tok(CLEAN).input_ids[position])


def test_patching_needs_prompts_of_the_same_length(tiny):
    with pytest.raises(ValueError, match="same token length: the clean one has 9 tokens, the corrupted one 2"):
        patch_activations(tiny, CLEAN, "Hello world")


# -- attribution patching ------------------------------------------------------------------------------------------
def attribution_by_hand(hf, tok) -> torch.Tensor:
    """grad x (clean - corrupted) of each layer output [layers, positions], normalised, with plain torch hooks."""
    kept: dict = {}

    def keep(i):
        def hook(module, args, out):
            out.retain_grad()
            kept[i] = out
        return hook
    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(hf.model.layers)]
    try:
        clean_logits = hf(**tok(CLEAN, return_tensors="pt")).logits
        clean = {i: h.detach() for i, h in kept.items()}
        corrupted_logits = hf(**tok(CORRUPTED, return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()
    answer = clean_logits[0, -1].argmax()
    corrupted_logits[:, -1, answer].sum().backward()
    high, low = clean_logits[0, -1, answer], corrupted_logits[0, -1, answer]
    return torch.stack([((clean[i] - kept[i]) * kept[i].grad).sum(-1)[0] for i in sorted(kept)]).detach() / (
        high - low).detach()


def test_attribution_patching_equals_grad_times_activation_by_hand(tiny, hf, tok, traces, tmp_path):
    result = attribution_patching(tiny, CLEAN, CORRUPTED)
    assert len(traces) == 1  # one trace: a clean and a corrupted invoke, one backward pass
    assert result.effect.shape == (3, 9) and result.method == "Attribution patching"
    torch.testing.assert_close(result.effect, attribution_by_hand(hf, tok), atol=1e-4, rtol=1e-4)
    graph_functions_are_wire_safe(traces)
    assert matplotlib.image.imread(result.plot(tmp_path / "attribution.png"))[..., :3].std() > 0.05


# -- attention patterns --------------------------------------------------------------------------------------------
def test_attention_pattern_equals_eager_attention_and_plots(tok, tmp_path):
    model = StandardizedTransformer(tiny_llama(tok, 3), tokenizer=tok, enable_attention_probs=True)
    result = attention_pattern(model, CLEAN, layer=2, head=3)
    plain = tiny_llama(tok, 3)
    plain.set_attn_implementation("eager")
    with torch.no_grad():
        expected = plain(**tok(CLEAN, return_tensors="pt"), output_attentions=True).attentions[2][0, 3]
    torch.testing.assert_close(result.pattern, expected)
    assert result.input_tokens[-1] == " of" and (result.pattern.triu(1) == 0).all()  # causal
    pixels = matplotlib.image.imread(result.plot(tmp_path / "pattern.png"))
    assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.05


# -- patchscope ----------------------------------------------------------------------------------------------------
def test_patchscope_equals_patching_the_state_by_hand(tiny, hf, tok, traces):
    result = patchscope(tiny, CLEAN, layer=1, position=3, target_layer=0, top_k=4)
    kept = {}
    run_hooked(hf, tok, CLEAN, 1, lambda out: kept.__setitem__("h", out[0, 3]))

    def patch(out):
        out = out.clone()
        out[0, -1] = kept["h"]
        return out
    probs = run_hooked(hf, tok, IDENTITY_PROMPT, 0, patch)[0, -1].softmax(-1)
    top = probs.topk(4)
    assert result.top_ids.tolist() == top.indices.tolist()
    torch.testing.assert_close(result.top_probs, top.values)
    assert result.top_tokens == [tok.decode(i) for i in top.indices]
    assert len(traces) == 2  # the source, then the target, in one session
    graph_functions_are_wire_safe(traces)


def test_attention_pattern_and_patchscope_run_unchanged_remotely(tok, tmp_path):
    from tests.server.serving import hosting

    served = StandardizedTransformer(tiny_llama(tok, 3), tokenizer=tok, enable_attention_probs=True)
    client = StandardizedTransformer(tiny_llama(tok, 3), tokenizer=tok, enable_attention_probs=True)
    client._remote_name = "tiny-llama"

    def run(remote: bool) -> tuple:
        pattern = attention_pattern(client, CLEAN, layer=1, head=2, remote=remote).pattern
        scope = patchscope(client, CLEAN, layer=2, target_layer=0, remote=remote)
        return pattern, scope.top_ids, scope.top_probs

    with hosting({"tiny-llama": served}, tmp_path):
        remote = run(True)
    for got, expected in zip(remote, run(False)):
        torch.testing.assert_close(got, expected)
