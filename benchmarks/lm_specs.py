"""The SmolLM2 scenario specs: for each scenario its variants, their baselines, checks and headlines.

Imports torch and the interventions only, never nnglass: the peer library's worker (peer.py) builds its
variants from the same specs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from interventions import (empty_trace, generate_saving_logits, invokes, layer_outputs, plain_forward,
                           plain_generate, plain_stop_after, save_layer, save_layers, separate_traces, stop_after)

PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It is named after the engineer"  # 20 tokens
PROMPTS = ("Hello, my name is", "The capital of France is", "One plus one equals", "My favourite colour is",
           "Water boils at a temperature of", "The largest planet in the solar system is", "Cats like to",
           "Once upon a time there was")  # 3 to 8 tokens each
LAYERS = 30
SAVE_LAYER = 15
STOP_LAYERS = (5, 15)
NEW_TOKENS = 8
WARMUP = 2  # each variant has also run once before, for its check
# Timed repetitions per scenario on full runs (a forward takes about 0.1 s here; quick runs take fewer).
REPS = {"lm_empty": 40, "lm_save_one": 80, "lm_save_all": 40, "lm_early_stop": 40, "lm_invokes": 30,
        "lm_generate": 30}
ONE_SAVE_GOAL_PCT = 1.0    # lm_save_one: overhead goal, % of the plain forward
ATOL = 1e-4


# -- checks (once per variant, outside the timing) -----------------------------------------------------------
def value(saved: Any) -> Any:
    """A saved value: nnglass proxies hold it in .value, nnsight returns it as is."""
    return saved.value if hasattr(saved, "value") and not isinstance(saved, torch.Tensor) else saved


def same(saved: Any, expected: torch.Tensor) -> None:
    got = value(saved)
    got = got[0] if isinstance(got, tuple) else got
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=ATOL):
        raise AssertionError(f"saved {tuple(got.shape)} differs from the plain forward's {tuple(expected.shape)}")


def each_same(saved: list, expected: list[torch.Tensor]) -> None:
    if len(saved) != len(expected):
        raise AssertionError(f"saved {len(saved)} values, expected {len(expected)}")
    for s, e in zip(saved, expected):
        same(s, e)


def hidden_rows(saved: list) -> None:
    """An invoke's save is one row of [*, hidden] activations."""
    if len(saved) != len(PROMPTS):
        raise AssertionError(f"saved {len(saved)} values for {len(PROMPTS)} invokes")
    for s in saved:
        got = value(s)
        if got.shape[0] != 1 or got.shape[-1] != 576:
            raise AssertionError(f"an invoke saved shape {tuple(got.shape)}")


# -- the scenarios -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One SmolLM2 scenario: its variants, what each is compared with, and what the plot and targets use."""

    title: str
    variants: tuple[str, ...]
    baselines: dict[str, str]
    headlines: tuple[tuple[str, str], ...]  # (label, variant): plotted and checked against the targets
    build: Callable[[Any, Any], tuple[dict[str, Callable[[], Any]], dict[str, Callable[[Any], None]]]]
    notes: tuple[str, ...] = ()


def _parts(model: Any) -> tuple[Any, Any, int]:
    """The transformers model, the tokenizer and the pad id of a library's LanguageModel."""
    tok = model.tokenizer
    return model._module, tok, tok.pad_token_id


def _build_empty(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    return {"forward": lambda: plain_forward(hf, tok, PROMPT),
            "trace, empty": lambda: empty_trace(lib, model, PROMPT)}, {}


def _build_save_one(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)[SAVE_LAYER]
    name = f"trace, save layer {SAVE_LAYER}"
    return ({"forward": lambda: plain_forward(hf, tok, PROMPT),
             name: lambda: save_layer(lib, model, PROMPT, SAVE_LAYER)},
            {name: lambda saved: same(saved, expected)})


def _build_save_all(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)
    name = f"trace, save all {LAYERS} layers"
    return ({"forward": lambda: plain_forward(hf, tok, PROMPT),
             name: lambda: save_layers(lib, model, PROMPT, LAYERS)},
            {name: lambda saved: each_same(saved, expected)})


def _build_early_stop(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)
    variants: dict[str, Callable[[], Any]] = {"forward": lambda: plain_forward(hf, tok, PROMPT)}
    checks: dict[str, Callable[[Any], None]] = {}
    for layer in STOP_LAYERS:
        plain, traced = f"forward, hook stops after layer {layer}", f"trace, stop after layer {layer}"
        variants[plain] = lambda layer=layer: plain_stop_after(hf, tok, PROMPT, layer)
        variants[traced] = lambda layer=layer: stop_after(lib, model, PROMPT, layer)
        checks[plain] = checks[traced] = lambda saved, layer=layer: same(saved, expected[layer])
    return variants, checks


def _build_invokes(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = [layer_outputs(hf, tok, prompt)[SAVE_LAYER] for prompt in PROMPTS]
    return ({"forward, batch of 8": lambda: plain_forward(hf, tok, PROMPTS),
             "trace, 8 invokes": lambda: invokes(lib, model, PROMPTS, SAVE_LAYER),
             "8 forwards": lambda: [plain_forward(hf, tok, prompt) for prompt in PROMPTS],
             "8 traces": lambda: separate_traces(lib, model, PROMPTS, SAVE_LAYER)},
            {"trace, 8 invokes": hidden_rows, "8 traces": lambda saved: each_same(saved, expected)})


def _build_generate(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, pad = _parts(model)
    generated = plain_generate(hf, tok, PROMPT, NEW_TOKENS, pad)
    new_tokens = generated[0, -NEW_TOKENS:].tolist()

    def check(saved: list) -> None:
        tokens = [value(s)[0, -1].argmax(-1).item() for s in saved]
        if tokens != new_tokens:
            raise AssertionError(f"greedy tokens from the saved logits {tokens} differ from generate's {new_tokens}")

    name = "generate, save lm_head each step"
    return ({"generate": lambda: plain_generate(hf, tok, PROMPT, NEW_TOKENS, pad),
             name: lambda: generate_saving_logits(lib, model, PROMPT, NEW_TOKENS, pad)},
            {name: check})


_ONE = f"trace, save layer {SAVE_LAYER}"
SPECS: dict[str, Spec] = {
    "lm_empty": Spec(
        "LM1. SmolLM2: empty trace vs plain forward (prompt of 20 tokens)",
        ("forward", "trace, empty"), {"trace, empty": "forward"}, (("empty trace", "trace, empty"),),
        _build_empty, ("`forward` = `hf(**tokenizer(prompt, return_tensors='pt'))`; `trace, empty` = "
                       "`with model.trace(prompt): pass`.",)),
    "lm_save_one": Spec(
        f"LM2. SmolLM2: trace saving layer {SAVE_LAYER}'s output vs plain forward",
        ("forward", _ONE), {_ONE: "forward"}, (("save one layer", _ONE),), _build_save_one,
        (f"`{_ONE}` = `with model.trace(prompt): model.model.layers[{SAVE_LAYER}].output.save()`; the saved "
         "value is checked against a plain forward hook's once, outside the timing.",
         f"Goal: overhead at most {ONE_SAVE_GOAL_PCT:g} % of the plain forward (nnsight was measured at about "
         "4 % on this model before this suite existed).")),
    "lm_save_all": Spec(
        f"LM3. SmolLM2: trace saving all {LAYERS} layers' outputs vs plain forward",
        ("forward", f"trace, save all {LAYERS} layers"), {f"trace, save all {LAYERS} layers": "forward"},
        ((f"save {LAYERS} layers", f"trace, save all {LAYERS} layers"),), _build_save_all,
        (f"`hidden.append(model.model.layers[i].output.save())` for i in range({LAYERS}), in one trace, into a "
         "list made before it: nnsight 0.8.1 fails on `hidden = [... for i in range(30)]` inside the trace "
         "(UnboundLocalError: it hands back only saved values assigned in the body), so the shared code avoids it.",)),
    "lm_early_stop": Spec(
        "LM4. SmolLM2: early stop (`tracer.stop()`) after a layer vs plain forwards",
        ("forward", *(v for layer in STOP_LAYERS for v in (f"forward, hook stops after layer {layer}",
                                                             f"trace, stop after layer {layer}"))),
        {**{f"trace, stop after layer {layer}": f"forward, hook stops after layer {layer}" for layer in STOP_LAYERS},
         **{f"forward, hook stops after layer {layer}": "forward" for layer in STOP_LAYERS}},
        ((f"stop after layer {STOP_LAYERS[0]}", f"trace, stop after layer {STOP_LAYERS[0]}"),), _build_early_stop,
        ("`trace, stop after layer L` saves layer L's output and calls `tracer.stop()`; its baseline "
         "`forward, hook stops after layer L` is a plain forward whose hook on layer L raises (early stopping "
         "without a library); the plain ones are compared with the full forward.",)),
    "lm_invokes": Spec(
        "LM5. SmolLM2: 8 prompts (3 to 8 tokens) in 8 invokes of one trace vs 8 separate traces",
        ("forward, batch of 8", "trace, 8 invokes", "8 forwards", "8 traces"),
        {"trace, 8 invokes": "forward, batch of 8", "8 traces": "8 forwards"},
        (("8 invokes, one trace", "trace, 8 invokes"), ("8 separate traces", "8 traces")), _build_invokes,
        (f"Each invoke and each trace saves layer {SAVE_LAYER}'s output. `forward, batch of 8` tokenizes the 8 "
         "prompts with left padding and runs one forward; `8 forwards` runs them one by one.",)),
    "lm_generate": Spec(
        f"LM6. SmolLM2: greedy generation of {NEW_TOKENS} tokens saving lm_head's output at every step",
        ("generate", "generate, save lm_head each step"), {"generate, save lm_head each step": "generate"},
        ((f"generate {NEW_TOKENS} tokens", "generate, save lm_head each step"),), _build_generate,
        (f"`generate` = `hf.generate(**tokenizer(prompt), max_new_tokens={NEW_TOKENS}, do_sample=False, "
         "pad_token_id=...)`; the traced variant passes the same settings to `model.generate`. nnglass saves "
         f"`model.lm_head.output` and then `model.lm_head.next().output` {NEW_TOKENS - 1} times; nnsight 0.5+ has "
         f"no `Envoy.next()`, so the same function takes its idiom there: `for step in tracer.iter[:{NEW_TOKENS}]:` "
         "appending `model.lm_head.output` to a saved list. The greedy tokens of the saved logits are checked "
         "against `generate`'s.",)),
}
