"""StandardizedTransformer and renaming: standard names reach the original modules, on every architecture."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from transformers import (AutoModelForCausalLM, BloomConfig, Gemma2Config, Gemma3TextConfig,
                          GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, MixtralConfig,
                          Olmo2Config, OPTConfig, Phi3Config, PhiConfig, Qwen2Config, Qwen2MoeConfig, Qwen3Config)

from nnglass import LanguageModel, NNsight, Proxy
from nnglass.modeling.standard import ArchitectureError, StandardizedTransformer

PROMPT = "The Eiffel Tower is in the city of"
# Written out by hand from each transformers model, independently of standard.py's table:
# (embeddings, layers, attention in a layer, MLP in a layer or None, final norm)
ORIGINAL = {
    "gpt2": ("transformer.wte", "transformer.h", "attn", "mlp", "transformer.ln_f"),
    "llama": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "mistral": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "qwen2": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "gemma": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "gpt_neox": ("gpt_neox.embed_in", "gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
    "opt": ("model.decoder.embed_tokens", "model.decoder.layers", "self_attn", None, "model.decoder.final_layer_norm"),
    "phi": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.final_layernorm"),
    "qwen3": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "gemma2": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "gemma3_text": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "phi3": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "olmo2": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "mixtral": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
    "qwen2_moe": ("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
}
MOE = ("mixtral", "qwen2_moe")
ARCHS = list(ORIGINAL)
BLOOM_NAMES = {"embed_tokens": "transformer.word_embeddings", "layers": "transformer.h",
               "self_attn": "self_attention", "ln_final": "transformer.ln_f"}


def tiny_config(arch: str, tok, layers: int = 2):
    """A small config of one architecture, with the SmolLM2 tokenizer's vocabulary."""
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, **ids)
    return {
        "gpt2": lambda: GPT2Config(n_layer=layers, n_embd=32, n_head=2, **ids),
        "llama": lambda: LlamaConfig(num_key_value_heads=2, **small),
        "mistral": lambda: MistralConfig(num_key_value_heads=2, **small),
        "qwen2": lambda: Qwen2Config(num_key_value_heads=2, **small),
        "gemma": lambda: GemmaConfig(num_key_value_heads=2, head_dim=8, **small),
        "gpt_neox": lambda: GPTNeoXConfig(**small),
        "opt": lambda: OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=layers, num_attention_heads=4,
                                 word_embed_proj_dim=32, **ids),
        "phi": lambda: PhiConfig(**small),
        "qwen3": lambda: Qwen3Config(num_key_value_heads=2, head_dim=16, **small),  # heads * head_dim != hidden
        "gemma2": lambda: Gemma2Config(num_key_value_heads=2, head_dim=8, sliding_window=4, **small),
        "gemma3_text": lambda: Gemma3TextConfig(num_key_value_heads=2, head_dim=8, sliding_window=4, **small),
        "phi3": lambda: Phi3Config(num_key_value_heads=2, **small),
        "olmo2": lambda: Olmo2Config(num_key_value_heads=2, **small),
        "mixtral": lambda: MixtralConfig(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **small),
        "qwen2_moe": lambda: Qwen2MoeConfig(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                            moe_intermediate_size=32, shared_expert_intermediate_size=32, **small),
        "bloom": lambda: BloomConfig(n_layer=layers, hidden_size=32, n_head=4, **ids),
    }[arch]()


def tiny_model(arch: str, tok, layers: int = 2) -> torch.nn.Module:
    """A plain transformers model of one architecture with random weights (seeded)."""
    torch.manual_seed(0)
    experts = {"experts_implementation": "batched_mm"} if arch in MOE else {}  # fake tensors cannot run grouped_mm
    return AutoModelForCausalLM.from_config(tiny_config(arch, tok, layers), **experts).eval()


@pytest.fixture(params=ARCHS)
def arch(request, tok):
    """(architecture, StandardizedTransformer, the same transformers model used plainly)."""
    hf = tiny_model(request.param, tok)
    return request.param, StandardizedTransformer(hf, tokenizer=tok), hf


def run_eager(hf, tok, edits: dict[tuple[str, str], Callable] | None = None) -> tuple[torch.Tensor, dict]:
    """A plain run with torch hooks: logits, and each module's first input and main output by (path, kind).

    `edits` maps (path, "input" or "output") to a function giving the replacement of that value.
    """
    edits, seen, handles = edits or {}, {}, []

    def pre(path, module, args, kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        edit = edits.get((path, "input"))
        if edit is not None:
            first = edit(first)
            if args:
                args = (first, *args[1:])
            else:
                kwargs = {**kwargs, next(iter(kwargs)): first}
        seen[(path, "input")] = first
        return (args, kwargs) if edit is not None else None

    def post(path, module, args, output):
        main = output[0] if isinstance(output, tuple) else output
        edit = edits.get((path, "output"))
        if edit is not None:
            main = edit(main)
            output = (main, *output[1:]) if isinstance(output, tuple) else main
        seen[(path, "output")] = main
        return output if edit is not None else None

    for path, module in hf.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, path=path: pre(path, m, a, k), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, o, path=path: post(path, m, a, o)))
    try:
        logits = hf(**tok(PROMPT, return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


def close(actual, expected) -> None:
    """Equal up to float noise; a saved proxy is compared by its value."""
    actual = actual.value if isinstance(actual, Proxy) else actual
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


# -- the standard names are the original envoys ------------------------------------------------------------
def test_standard_names_are_the_original_envoys(arch):
    name, model, _ = arch
    embed, layers, attn, mlp, norm = ORIGINAL[name]
    assert model.embed_tokens is model.get(embed)
    assert model.ln_final is model.get(norm)
    assert model.layers[1] is model.get(f"{layers}.1")
    assert model.layers[1].self_attn._path == f"{layers}.1.{attn}"
    if mlp is not None:
        assert model.layers[0].mlp._path == f"{layers}.0.{mlp}"
    assert model.lm_head._path == "lm_head"
    config = model._model.config
    assert (model.num_layers, model.num_heads, model.hidden_size, model.vocab_size) == (
        2, config.num_attention_heads, 32, config.vocab_size)


def test_reads_equal_the_original_modules_values(arch, tok):
    name, model, hf = arch
    _, layers, attn, mlp, _ = ORIGINAL[name]
    parts = [("layers", ""), ("attentions", f".{attn}")] + ([("mlps", f".{mlp}")] if mlp else [])
    with model.trace(PROMPT):
        got = {(f"{layers}.{i}{suffix}", kind): getattr(model, f"{part}_{kind}")[i].save()
               for part, suffix in parts for i in range(2) for kind in ("input", "output")}
        logits = model.logits.save()
        probs = model.next_token_probs.save()
    expected_logits, seen = run_eager(hf, tok)
    for key, value in got.items():
        close(value, seen[key])
    close(logits, expected_logits)
    close(probs, expected_logits[:, -1].softmax(-1))


def test_assignments_equal_the_same_edits_by_hand(arch, tok):
    name, model, hf = arch
    _, layers, attn, mlp, _ = ORIGINAL[name]
    with model.trace(PROMPT):
        model.layers_input[1] = model.layers_input[1] * 2
        model.attentions_output[0] = model.attentions_output[0] * 0.5   # a tuple output, rebuilt
        model.attentions_input[1] = model.attentions_input[1] + 1
        model.layers_output[1] = model.layers_output[1] - 1
        if mlp is not None:
            model.mlps_output[0][:] = 0                                 # in place
            model.mlps_input[1] = model.mlps_input[1] * 3
        logits = model.logits.save()
    edits = {(f"{layers}.1", "input"): lambda x: x * 2,
             (f"{layers}.0.{attn}", "output"): lambda x: x * 0.5,
             (f"{layers}.1.{attn}", "input"): lambda x: x + 1,
             (f"{layers}.1", "output"): lambda x: x - 1}
    if mlp is not None:
        edits.update({(f"{layers}.0.{mlp}", "output"): torch.zeros_like,
                      (f"{layers}.1.{mlp}", "input"): lambda x: x * 3})
    expected, _ = run_eager(hf, tok, edits)
    close(logits, expected)
    assert not torch.allclose(expected, run_eager(hf, tok)[0])  # the edits matter


def test_model_level_accessors_equal_the_plain_values(arch, tok):
    name, model, hf = arch
    embed = ORIGINAL[name][0]
    with model.trace(PROMPT):
        ids, mask = model.input_ids.save(), model.attention_mask.save()
        embeddings = model.token_embeddings.save()
        model.token_embeddings = model.token_embeddings * 2
        projected = model.project_on_vocab(model.layers_output[1]).save()  # the last layer: the logits
        logits = model.logits.save()
    plain = tok(PROMPT, return_tensors="pt")
    assert torch.equal(ids.value, plain.input_ids) and torch.equal(mask.value, plain.attention_mask)
    unedited, seen = run_eager(hf, tok)
    close(embeddings, seen[(embed, "output")])
    close(logits, run_eager(hf, tok, {(embed, "output"): lambda x: x * 2})[0])
    torch.testing.assert_close(projected.value, logits.value, rtol=0, atol=1e-5)
    assert not torch.allclose(logits.value, unedited)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
def test_skip_layers_equals_layers_returning_their_input(name, tok):
    hf = tiny_model(name, tok, layers=3)
    model = StandardizedTransformer(hf, tokenizer=tok)
    with model.trace(PROMPT):
        model.skip_layers(1, 2)
        logits = model.logits.save()
    layers = ORIGINAL[name][1]
    edits = {}
    for i in (1, 2):  # each layer's output replaced by its input, by hand
        edits[(f"{layers}.{i}", "output")] = lambda x, i=i: kept[i]
    kept = {}
    handles = [hf.get_submodule(f"{layers}.{i}").register_forward_pre_hook(
        lambda m, args, kwargs, i=i: kept.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for i in (1, 2)]
    try:
        expected, _ = run_eager(hf, tok, edits)
    finally:
        for handle in handles:
            handle.remove()
    close(logits, expected)
    assert not torch.allclose(expected, run_eager(hf, tok)[0])


def test_steer_inside_a_trace_next_to_other_edits(tok):
    hf = tiny_model("qwen3", tok)
    model = StandardizedTransformer(hf, tokenizer=tok)
    torch.manual_seed(1)
    vector = torch.randn(32)
    with model.trace(PROMPT):
        model.mlps_output[0][:] = 0
        model.steer([0, 1], vector, factor=0.5, positions=[1, 2])
        model.steer(1, model.layers_output[0][0, 3])  # a vector computed in the same trace
        logits = model.logits.save()

    def add(x, positions, delta):
        x = x.clone()
        x[:, positions] += delta
        return x
    kept = {}
    hook = hf.model.layers[0].register_forward_hook(lambda m, a, out: kept.__setitem__("h", out.clone()))
    edits = {("model.layers.0.mlp", "output"): torch.zeros_like,
             ("model.layers.0", "output"): lambda x: add(x, [1, 2], 0.5 * vector),
             ("model.layers.1", "output"): lambda x: add(add(x, [1, 2], 0.5 * vector), slice(None), kept["h"][0, 3])}
    try:
        expected, _ = run_eager(hf, tok, edits)
    finally:
        hook.remove()
    close(logits, expected)


def test_moe_mlp_is_the_sparse_block_and_router_logits_are_reachable(tok):
    for name in MOE:
        hf = tiny_model(name, tok)
        model = StandardizedTransformer(hf, tokenizer=tok)
        assert type(model.mlps[0]._module).__name__.endswith("SparseMoeBlock")
        assert model.layers[1].router._path == "model.layers.1.mlp.gate"
        with model.trace(PROMPT):
            router = [model.router_logits[i].save() for i in range(2)]
            model.mlps_output[1] = model.mlps_output[1] * 0.5
            logits = model.logits.save()
        _, seen = run_eager(hf, tok)
        for i in range(2):
            close(router[i], seen[(f"model.layers.{i}.mlp.gate", "output")])
            assert router[i].shape == (len(tok(PROMPT).input_ids), hf.config.num_experts
                                       if name == "qwen2_moe" else hf.config.num_local_experts)
        close(logits, run_eager(hf, tok, {("model.layers.1.mlp", "output"): lambda x: x * 0.5})[0])
    with pytest.raises(ArchitectureError, match="not a mixture of experts"):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok).router_logits


def test_attentions_and_mlps_are_the_layers_envoys(arch):
    name, model, _ = arch
    assert len(model.attentions) == len(model.layers) == 2
    assert model.attentions[1] is model.layers[1].self_attn
    if ORIGINAL[name][3] is not None:
        assert model.mlps[0] is model.layers[0].mlp


def test_cache_keys_stay_original_paths(arch):
    name, model, _ = arch
    layers = ORIGINAL[name][1]
    with model.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=[model.layers[0], model.layers[1].self_attn]).save()
    assert set(cache) == {f"model.{layers}.0", f"model.{layers}.1.{ORIGINAL[name][2]}"}  # nnsight's keys


# -- errors -------------------------------------------------------------------------------------------------
def test_opt_has_no_mlp_accessor(tok):
    model = StandardizedTransformer(tiny_model("opt", tok), tokenizer=tok)
    for accessor in ("mlps_output", "mlps_input"):
        with pytest.raises(ArchitectureError, match="no single MLP module.*fc1, fc2"):
            getattr(model, accessor)


def test_missing_modules_are_named(tok):
    names = {"embed_tokens": "model.embed_tokens", "layers": "model.layers", "ln_final": "model.final_norm",
             "self_attn": "attention"}
    with pytest.raises(ArchitectureError, match="ln_final \\(no module 'model.final_norm'\\)"):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, names=names)
    with pytest.raises(ArchitectureError, match="layers\\[i\\].self_attn \\(no module 'attention' in 'model.layers.0'"):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, names={**names, "ln_final": "model.norm"})


def test_wrong_shapes_are_named(tok):
    names = {"embed_tokens": "model.embed_tokens", "layers": "model.layers", "ln_final": "model.layers.1.mlp.up_proj"}
    message = "output of ln_final \\(module 'model.layers.1.mlp.up_proj'\\) has shape \\(1, 2, 64\\)"
    with pytest.raises(ArchitectureError, match=message):
        StandardizedTransformer(tiny_model("llama", tok), tokenizer=tok, names=names)


def test_unknown_architecture_asks_for_a_name_map(tok):
    with pytest.raises(ArchitectureError, match="No standard names for architecture 'bloom'.*names="):
        StandardizedTransformer(tiny_model("bloom", tok), tokenizer=tok)


# -- a custom name map (Bloom: its layers return tuples) -------------------------------------------------------
def test_custom_name_map_reads_and_assigns_tuple_outputs(tok):
    hf = tiny_model("bloom", tok)
    model = StandardizedTransformer(hf, tokenizer=tok, names=BLOOM_NAMES)
    assert model._tuple_widths[None] > 0 and model.layers[0].self_attn._path == "transformer.h.0.self_attention"
    with model.trace(PROMPT):
        before = model.layers_output[0].save()
        model.layers_output[0] = model.layers_output[0] * 2
        after = model.layers_output[0].save()
        logits = model.logits.save()
    plain, seen = run_eager(hf, tok)
    close(before, seen[("transformer.h.0", "output")])
    close(after, before * 2)
    close(logits, run_eager(hf, tok, {("transformer.h.0", "output"): lambda x: x * 2})[0])
    assert not torch.allclose(logits, plain)


def test_loading_from_a_checkpoint_directory_checks_on_the_meta_device(tok, tmp_path):
    hf = tiny_model("gpt2", tok)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = StandardizedTransformer(str(tmp_path))
    assert not model.dispatched
    with model.trace(PROMPT):
        out = model.layers_output[1].save()
    close(out, run_eager(hf, tok)[1][("transformer.h.1", "output")])


# -- renaming as a general feature -----------------------------------------------------------------------------
class Nested(torch.nn.Module):
    """transformer.h[0..1] (Linear 4 -> 4) and a head, like a tiny GPT-2 layout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.transformer = torch.nn.Module()
        self.transformer.h = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.transformer.h:
            x = layer(x)
        return self.head(x)


def test_rename_on_a_plain_nnsight():
    net = Nested()
    model = NNsight(net, rename={"transformer.h": "layers", "transformer": ["model", "body"], "head": "out"})
    assert model.layers[1] is model.transformer.h[1] and model.layers[1]._path == "transformer.h.1"
    assert model.model.h is model.body.h is model.transformer.h and model.out is model.head
    x = torch.rand(1, 4)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model.layers[0]]).save()  # first: asked for later, it holds only what runs later
        via_alias = model.layers[0].output.save()
        model.model.h[1].output = model.layers[1].output * 0
        out = model.output.save()
    torch.testing.assert_close(via_alias.value, net.transformer.h[0](x))
    torch.testing.assert_close(out.value, net.head.bias[None])
    assert list(cache) == ["model.transformer.h.0"]


def test_rename_of_a_missing_module_is_an_error():
    with pytest.raises(AttributeError, match="no module path ends with 'transformer.g'"):
        NNsight(Nested(), rename={"transformer.g": "layers"})
    with pytest.raises(AttributeError, match="no module path ends with 'attn'"):
        NNsight(Nested(), rename={"attn": "self_attn"})


def test_rename_keys_that_end_a_path_mount_where_the_path_starts():
    """As nnsight: {".h": ...} and {"h.0": ...} alias the module wherever a path ends with the key."""
    net = Nested()
    model = NNsight(net, rename={".h": "layers", "h.0": "first_layer"})
    assert model.transformer.layers is model.transformer.h
    assert model.transformer.first_layer is model.transformer.h[0]
    x = torch.rand(1, 4)
    with model.trace(x):
        first = model.transformer.first_layer.output.save()
    torch.testing.assert_close(first, net.transformer.h[0](x))


def test_rename_on_a_language_model(tok):
    hf = tiny_model("gpt2", tok)
    model = LanguageModel(hf, tokenizer=tok, rename={"transformer.h": "layers", "attn": "self_attn"})
    with model.trace(PROMPT):
        attn = model.layers[1].self_attn.output[0].save()
    close(attn, run_eager(hf, tok)[1][("transformer.h.1.attn", "output")])


def test_moe_checkpoint_needs_experts_that_fake_tensors_can_run(tok, tmp_path):
    tiny_model("mixtral", tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ArchitectureError, match="experts_implementation='batched_mm'"):
        StandardizedTransformer(str(tmp_path))  # grouped_mm, float32, CPU
    model = StandardizedTransformer(str(tmp_path), experts_implementation="batched_mm")
    with model.trace(PROMPT):
        router = model.router_logits[0].save()
    assert router.shape == (len(tok(PROMPT).input_ids), 4)
