"""Batching as a property: k invokes in one trace give each invoke exactly what it gets alone.

Random small programs (reads, in-place edits, swaps, arithmetic across modules, gradients under a
backward pass, an early stop) run as 2-4 invokes of different batch sizes and prompt lengths; each
invoke's saved values must equal those of the same program traced alone.
"""
from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnglass import LanguageModel, NNsight

from tests.conftest import tiny_gpt2, tiny_llama

Named = collections.namedtuple("Named", ["hidden", "logits"])


class Stack(torch.nn.Module):
    """Three linear layers whose model output is a namedtuple, a dict or a ModelOutput."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.layers = torch.nn.ModuleList([torch.nn.Linear(6, 6) for _ in range(3)])

    def forward(self, x: torch.Tensor):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        logits = x * 2
        if self.kind == "namedtuple":
            return Named(x, logits)
        if self.kind == "dict":
            return {"hidden": x, "logits": logits}
        from transformers.modeling_outputs import CausalLMOutput
        return CausalLMOutput(logits=logits, hidden_states=(x,))


def final(kind: str, output):
    """The logits of a Stack output (or a language model's)."""
    if kind == "dict":
        return output["logits"]
    return output.logits


# -- programs -----------------------------------------------------------------------------------------
ACTION = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 2)),
    st.tuples(st.just("edit"), st.integers(0, 2), st.floats(-2, 2, allow_nan=False, width=32)),
    st.tuples(st.just("swap"), st.integers(0, 2), st.floats(0.5, 2, allow_nan=False, width=32)),
    st.tuples(st.just("sum"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("grad"), st.integers(0, 2)),
)
PROGRAM = st.lists(ACTION, min_size=1, max_size=5)
INVOKES = st.lists(st.tuples(st.integers(1, 3), PROGRAM), min_size=2, max_size=4)
STOP = st.one_of(st.none(), st.integers(0, 2))


def record(layers, output, program, stop) -> dict:
    """Record one invoke's program; the proxies it saves by name."""
    saved, grads = {}, []
    for step, action in enumerate(program):
        kind, layer = action[0], layers[action[1]]
        if kind == "read":
            saved[f"{step}:read"] = layer.output.save()
        elif kind == "edit":
            layer.output[:, -1] = action[2]
        elif kind == "swap":
            layer.output = layer.output * action[2]
        elif kind == "sum":
            other = layers[action[2]]
            saved[f"{step}:sum"] = (layer.output.mean(-1) + other.output.mean(-1)).save()
        else:
            grads.append((step, layer))
    saved["final"] = output().save()
    if grads and stop is None:
        with output()[:, -1].sum().backward(retain_graph=True):
            for step, layer in grads:
                saved[f"{step}:grad"] = layer.output.grad.save()
    if stop is not None:
        layers[stop].output.stop()
    return saved


def values(saved: dict) -> dict:
    """The values that were set (an early stop leaves later ones unset)."""
    out = {}
    for name, proxy in saved.items():
        try:
            out[name] = proxy.value
        except ValueError:
            out[name] = None
    return out


def assert_same(batched: dict, alone: dict) -> None:
    """Equal values, the batched ones right-aligned (left padding makes them wider)."""
    assert batched.keys() == alone.keys()
    for name in alone:
        a, b = alone[name], batched[name]
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if b.ndim >= 2 and b.shape[1] != a.shape[1]:
            b = b[:, b.shape[1] - a.shape[1]:]
        # batched float32 arithmetic sums in another order: allow rounding relative to the tensor's scale
        assert b.shape == a.shape, name
        assert (b - a).abs().max() <= 1e-4 * a.abs().max() + 1e-5, name


def run_property(model, layers, output, make_input, invokes, stop) -> None:
    inputs = [make_input(size, i) for i, (size, _) in enumerate(invokes)]
    with model.trace() as tracer:
        batched = []
        for given_input, (_, program) in zip(inputs, invokes):
            with tracer.invoke(given_input):
                batched.append(record(layers(), output, program, stop))
    for given_input, (_, program), saved in zip(inputs, invokes, batched):
        with model.trace(given_input):
            alone = record(layers(), output, program, stop)
        assert_same(values(saved), values(alone))


FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("kind", ["namedtuple", "dict", "modeloutput"])
@FAST
@given(invokes=INVOKES, stop=STOP)
def test_structured_outputs(kind, invokes, stop):
    net = Stack(kind).requires_grad_(True)
    model = NNsight(net)
    make = lambda size, i: torch.rand(size, 6, generator=torch.Generator().manual_seed(i))  # noqa: E731
    run_property(model, lambda: model.layers, lambda: final(kind, model.output), make, invokes, stop)


@pytest.fixture(scope="module")
def lms(smol_tokenizer):
    return {"llama": LanguageModel(tiny_llama(smol_tokenizer, 3), tokenizer=smol_tokenizer),
            "gpt2": LanguageModel(tiny_gpt2(smol_tokenizer, 3), tokenizer=smol_tokenizer)}


WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "slept"]


def prompts(size: int, seed: int) -> list[str]:
    """`size` prompts of different lengths."""
    return [" ".join(WORDS[(seed + j) % 9: (seed + j) % 9 + 1 + (seed * 3 + j) % 5]) for j in range(size)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invokes=INVOKES, stop=STOP)
def test_language_models(lms, arch, invokes, stop):
    model = lms[arch]
    layers = (lambda: model.model.layers) if arch == "llama" else (lambda: model.transformer.h)
    run_property(model, layers, lambda: model.lm_head.output, prompts, invokes, stop)


@pytest.mark.parametrize("copies", [{"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invokes=st.lists(st.tuples(st.integers(1, 2), st.floats(-2, 2, allow_nan=False, width=32)),
                        min_size=2, max_size=3))
def test_generation_with_copies_of_rows(lms, copies, invokes):
    model = lms["llama"]
    texts = [prompts(size, i) for i, (size, _) in enumerate(invokes)]

    def edit_and_read(value):
        model.model.layers[0].output[:, -1] = value
        return model.model.layers[2].output.save(), model.lm_head.output.save()

    with model.generate(max_new_tokens=2, **copies) as tracer:
        batched = []
        for text, (_, value) in zip(texts, invokes):
            with tracer.invoke(text):
                batched.append(edit_and_read(value))
    for text, (_, value), saved in zip(texts, invokes, batched):
        with model.generate(text, max_new_tokens=2, **copies):
            alone = edit_and_read(value)
        assert_same(values(dict(enumerate(saved))), values(dict(enumerate(alone))))
