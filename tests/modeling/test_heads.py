"""Inside attention: attention probabilities and per-head q, k, v, z, checked against plain models with torch hooks."""
from __future__ import annotations

import logging

import pytest
import torch

from nnglass.modeling.standard import ArchitectureError, StandardizedTransformer
from tests.modeling.test_standard import ARCHS, ORIGINAL, PROMPT, close, run_eager, tiny_model

# Written out by hand from each transformers model: the q/k/v module(s) and the output projection of an
# attention block. A fused module's output is [q heads | k heads | v heads], except GPT-NeoX's: [q k v of head 0 |
# q k v of head 1 | ...].
PROJECTIONS = {"gpt2": (("c_attn",) * 3, "c_proj"), "phi3": (("qkv_proj",) * 3, "o_proj"),
               "gpt_neox": (("query_key_value",) * 3, "dense"),
               "opt": (("q_proj", "k_proj", "v_proj"), "out_proj"), "phi": (("q_proj", "k_proj", "v_proj"), "dense")}
SEPARATE = (("q_proj", "k_proj", "v_proj"), "o_proj")
BLOOM_NAMES = {"embed_tokens": "transformer.word_embeddings", "layers": "transformer.h",
               "self_attn": "self_attention", "ln_final": "transformer.ln_f"}


def sizes(hf) -> tuple[int, int, int]:
    """(heads, key/value heads, head width) read off the config by hand."""
    config = hf.config
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads, \
        getattr(config, "head_dim", None) or config.hidden_size // heads


def columns(arch: str, hf, part: str, head: int) -> tuple[str, slice]:
    """The module (inside an attention block) and the output columns that hold one head of q, k or v."""
    heads, kv_heads, width = sizes(hf)
    names, _ = PROJECTIONS.get(arch, SEPARATE)
    index = "qkv".index(part)
    if arch == "gpt_neox":
        start = (3 * head + index) * width
        return names[index], slice(start, start + width)
    first = {0: 0, 1: heads, 2: heads + kv_heads}[index] if names[0] == names[1] else 0
    start = (first + head) * width
    return names[index], slice(start, start + width)


def by_hand(flat: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, positions, heads * width] -> [batch, heads, positions, width], written out with view."""
    batch, positions, _ = flat.shape
    return flat.view(batch, positions, -1, width).transpose(1, 2)


def attention_path(arch: str, layer: int) -> str:
    _, layers, attn, _, _ = ORIGINAL[arch]
    return f"{layers}.{layer}.{attn}"


# -- attention probabilities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_attention_probabilities_equal_eager_attentions(arch, tok):
    model = StandardizedTransformer(tiny_model(arch, tok), tokenizer=tok, enable_attention_probs=True)
    with model.trace(PROMPT):
        probs = [model.attention_probabilities[i].save() for i in range(2)]
        logits = model.logits.save()
    plain = tiny_model(arch, tok)
    plain.set_attn_implementation("eager")
    with torch.no_grad():
        expected = plain(**tok(PROMPT, return_tensors="pt"), output_attentions=True)
    for layer in range(2):
        close(probs[layer], expected.attentions[layer])
    torch.testing.assert_close(logits.value, expected.logits, rtol=0, atol=1e-5)


def test_editing_a_pattern_equals_the_same_edit_by_hand(tok):
    """Head 1 of layer 0 attends only to position 0: its output becomes v at position 0 (GQA: kv head 0)."""
    hf = tiny_model("llama", tok)
    model = StandardizedTransformer(hf, tokenizer=tok, enable_attention_probs=True)
    with model.trace(PROMPT):
        pattern = model.attention_probabilities[0]
        pattern[:, 1] = 0
        pattern[:, 1, :, 0] = 1
        logits = model.logits.save()
    heads, kv_heads, width = sizes(hf)
    assert heads // kv_heads == 2  # head 1 reads kv head 0
    plain = tiny_model("llama", tok)
    seen = {}
    attention = plain.model.layers[0].self_attn
    keep = attention.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out))

    def head_1_reads_position_0(module, args):
        z = args[0].clone()
        z[:, :, width:2 * width] = seen["v"][:, :1, :width]
        return (z,)
    edit = attention.o_proj.register_forward_pre_hook(head_1_reads_position_0)
    try:
        with torch.no_grad():
            expected = plain(**tok(PROMPT, return_tensors="pt")).logits
    finally:
        keep.remove()
        edit.remove()
    close(logits, expected)
    assert not torch.allclose(expected, plain(**tok(PROMPT, return_tensors="pt")).logits)


def test_attention_is_switched_only_when_asked_and_says_so(tok, caplog):
    model = StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok)
    assert model._model.config._attn_implementation == "sdpa"
    assert not hasattr(model._model.model.layers[0].self_attn, "attention_probs")
    with pytest.raises(ValueError, match="enable_attention_probs=True"):
        model.attention_probabilities
    with caplog.at_level(logging.WARNING, logger="nnglass"):
        enabled = StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, enable_attention_probs=True)
    assert "from 'sdpa' to eager attention" in caplog.text
    assert enabled.layers[1].self_attn.attention_probs._path == "model.layers.1.self_attn.attention_probs"


def test_attention_probabilities_of_a_model_loaded_later(tok, tmp_path):
    hf = tiny_model("qwen3", tok)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = StandardizedTransformer(str(tmp_path), enable_attention_probs=True)
    assert not model.dispatched
    with model.trace(PROMPT):
        probs = model.attention_probabilities[1].save()
    assert model._model.config._attn_implementation == "nnglass_eager"
    plain = tiny_model("qwen3", tok)
    plain.set_attn_implementation("eager")
    with torch.no_grad():
        expected = plain(**tok(PROMPT, return_tensors="pt"), output_attentions=True).attentions[1]
    close(probs, expected)


# -- per-head q, k, v, z -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_head_views_equal_the_projections_split_by_hand(arch, tok):
    hf = tiny_model(arch, tok)
    model = StandardizedTransformer(hf, tokenizer=tok)
    with model.trace(PROMPT):
        got = {(layer, part): getattr(model.heads[layer], part).save() for layer in range(2) for part in "qkvz"}
    _, seen = run_eager(hf, tok)
    heads, kv_heads, width = sizes(hf)
    (q, k, v), o = PROJECTIONS.get(arch, SEPARATE)
    for layer in range(2):
        attn = attention_path(arch, layer)
        if arch == "gpt_neox":  # per head: [q k v]
            fused = seen[(f"{attn}.{q}", "output")]
            flats = [fused.view(*fused.shape[:2], heads, 3 * width)[..., j * width:(j + 1) * width].flatten(2)
                     for j in range(3)]
        elif q == k:  # stacked
            flats = seen[(f"{attn}.{q}", "output")].split([heads * width, kv_heads * width, kv_heads * width], -1)
        else:
            flats = [seen[(f"{attn}.{name}", "output")] for name in (q, k, v)]
        for part, flat in zip("qkv", flats):
            close(got[(layer, part)], by_hand(flat, width))
        close(got[(layer, "z")], by_hand(seen[(f"{attn}.{o}", "input")], width))
        assert got[(layer, "q")].shape[1] == heads and got[(layer, "k")].shape[1] == kv_heads


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3", "gpt2", "gpt_neox", "olmo2"])
def test_head_edits_equal_the_same_edits_by_hand(arch, tok):
    hf = tiny_model(arch, tok)
    model = StandardizedTransformer(hf, tokenizer=tok)
    with model.trace(PROMPT):
        model.heads[0].q[:, 1] = 0                         # in place, through the view
        model.heads[0].k = model.heads[0].k * 2            # assigned: written through the view
        model.heads[1].v[:, 0, 2:] = 1.0
        model.heads[1].z[:, 1] = model.heads[1].z[:, 1] * 0.5
        logits = model.logits.save()
    _, _, width = sizes(hf)
    _, o = PROJECTIONS.get(arch, SEPARATE)
    edits: dict = {}

    def edit(layer: int, part: str, head: int | None, change) -> None:
        """Queue an in-place change of one head's columns (of every head of the part when head is None)."""
        count = sizes(hf)[0] if part == "q" else sizes(hf)[1]
        for one in range(count) if head is None else [head]:
            name, cols = columns(arch, hf, part, one)
            key = (f"{attention_path(arch, layer)}.{name}", "output")
            before = edits.get(key, lambda x: x)

            def changed(x, cols=cols, before=before):
                x = before(x).clone()
                change(x, cols)
                return x
            edits[key] = changed

    def zero(x, cols):
        x[..., cols] = 0

    def double(x, cols):
        x[..., cols] *= 2

    def ones_from_position_2(x, cols):
        x[:, 2:, cols] = 1.0

    def halve_head_1(z):
        z = z.clone()
        z[..., width:2 * width] *= 0.5
        return z
    edit(0, "q", 1, zero)
    edit(0, "k", None, double)
    edit(1, "v", 0, ones_from_position_2)
    edits[(f"{attention_path(arch, 1)}.{o}", "input")] = halve_head_1
    expected, _ = run_eager(hf, tok, edits)
    close(logits, expected)
    assert not torch.allclose(expected, run_eager(hf, tok)[0])


def test_a_custom_name_map_has_no_head_views(tok):
    model = StandardizedTransformer(tiny_model("bloom", tok), tokenizer=tok, names=BLOOM_NAMES)
    with pytest.raises(ArchitectureError, match="No per-head accessors for 'bloom' with this name map"):
        model.heads


def test_a_wrong_head_layout_fails_at_load(tok, monkeypatch):
    from nnglass.modeling import architectures

    stacked = architectures.Projections("q_proj", "q_proj", "q_proj", "o_proj", "stacked")
    monkeypatch.setitem(architectures.PROJECTIONS, "llama", stacked)
    with pytest.raises(ArchitectureError, match="output of layers\\[0\\].self_attn.q_proj .* has shape "
                                                "\\(1, 2, 32\\); expected \\(1, 2, 64\\)"):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok)
    monkeypatch.setitem(architectures.PROJECTIONS, "llama", architectures.Projections("q", "k", "v", "o_proj"))
    with pytest.raises(ArchitectureError, match="self_attn \\(module 'model.layers.0.self_attn'\\) lacks the "
                                                "projections k, q, v"):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok)


# -- the same accessors through a server -----------------------------------------------------------------------
def test_heads_and_patterns_run_unchanged_remotely(tok, tmp_path):
    from tests.server.serving import hosting

    served = StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, enable_attention_probs=True)
    client = StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, enable_attention_probs=True)
    client._remote_name = "tiny-llama"

    def run(remote: bool) -> list[torch.Tensor]:
        with client.trace(PROMPT, remote=remote):
            q = client.heads[0].q.save()
            client.heads[0].v[:, 1] = 0
            pattern = client.attention_probabilities[1].save()
            client.attention_probabilities[1][:, 2] = pattern[:, 2].flip(-1)
            z = client.heads[1].z.save()
            client.heads[1].q_rot[:, 0] = 0
            k_rot = client.heads[1].k_rot.save()
            logits = client.logits.save()
        return [q.value, pattern.value, z.value, k_rot.value, logits.value]

    with hosting({"tiny-llama": served}, tmp_path):
        remote = run(True)
    for got, expected in zip(remote, run(False)):
        torch.testing.assert_close(got, expected)


# -- q and k after rotary ---------------------------------------------------------------------------------------
def test_rotated_q_and_k_equal_rotary_applied_by_hand(tok):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf = tiny_model("llama", tok)
    model = StandardizedTransformer(hf, tokenizer=tok, enable_attention_probs=True)
    with model.trace(PROMPT):
        q_rot, k_rot = model.heads[1].q_rot.save(), model.heads[1].k_rot.save()
    with model.trace(PROMPT):
        model.heads[0].k_rot = model.heads[0].k_rot * 0  # every score 0: uniform attention over the causal past
        logits = model.logits.save()
    _, seen = run_eager(hf, tok)
    _, _, width = sizes(hf)
    positions = torch.arange(len(tok(PROMPT).input_ids))[None]  # [1, tokens]
    cos, sin = hf.model.rotary_emb(seen[("model.embed_tokens", "output")], positions)
    q, k = (by_hand(seen[(f"model.layers.1.self_attn.{name}", "output")], width) for name in ("q_proj", "k_proj"))
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    close(q_rot, expected_q)
    close(k_rot, expected_k)
    assert q_rot.shape[1] == 4 and k_rot.shape[1] == 2
    expected, _ = run_eager(hf, tok, {("model.layers.0.self_attn.k_proj", "output"): torch.zeros_like})
    close(logits, expected)  # rotary of a zero key is zero


def test_rotated_q_needs_the_probes(tok):
    model = StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok)
    with model.trace(PROMPT):
        with pytest.raises(ValueError, match="heads\\[i\\].q_rot needs .*enable_attention_probs=True"):
            model.heads[0].q_rot
