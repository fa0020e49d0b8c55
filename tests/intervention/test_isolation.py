"""Invokes are exactly isolated, and the engine's state never leaks: one test per reported bug."""
import collections
import dataclasses
import gc

import pytest
import torch

import nnglass
from nnglass import LanguageModel, NNsight, TraceError

from tests.conftest import make_net, tiny_llama


class Pair(torch.nn.Module):
    """A model whose output is a structure: `kind` picks a namedtuple, dict subclass, dataclass or ModelOutput."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor):
        h = self.a(x)
        return wrap(self.kind, h, self.b(h))


Named = collections.namedtuple("Named", ["hidden", "logits"])


class Dicty(dict):
    """A dict subclass output."""


@dataclasses.dataclass
class Data:
    hidden: torch.Tensor
    logits: torch.Tensor


def wrap(kind: str, hidden: torch.Tensor, logits: torch.Tensor):
    if kind == "namedtuple":
        return Named(hidden, logits)
    if kind == "dict":
        return Dicty(hidden=hidden, logits=logits)
    if kind == "dataclass":
        return Data(hidden, logits)
    from transformers.modeling_outputs import BaseModelOutput
    return BaseModelOutput(last_hidden_state=logits, hidden_states=(hidden,))


def logits_of(kind: str, output):
    if kind == "namedtuple":
        return output.logits
    if kind == "dict":
        return output["logits"]
    if kind == "dataclass":
        return output.logits
    return output.last_hidden_state


def rows():
    torch.manual_seed(3)
    return torch.rand(2, 4), torch.rand(3, 4)


# 1 ------------------------------------------------------------------------------------------------
def test_grad_inside_each_of_two_invokes_is_delivered():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    model = NNsight(net)
    a, b = rows()
    with model.trace() as tracer:
        with tracer.invoke(a):
            grad_a = model[0].output.grad.save()
            out_a = model.output
        with tracer.invoke(b):
            grad_b = model[0].output.grad.save()
            (out_a.sum() + model.output.sum() * 2).backward()  # one backward pass over both invokes
    expected = []
    for x, scale in ((a, 1), (b, 2)):
        hidden = net[0](x)
        hidden.retain_grad()
        (net[2](net[1](hidden)).sum() * scale).backward()
        expected.append(hidden.grad)
    torch.testing.assert_close(grad_a.value, expected[0])
    torch.testing.assert_close(grad_b.value, expected[1])


def test_grad_edit_inside_one_invoke_changes_only_its_rows():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    weight = net[0].weight
    model = NNsight(net)
    a, b = rows()
    with model.trace() as tracer:
        with tracer.invoke(a):
            model[1].output.grad[:] = 0          # no gradient flows back from invoke a
        with tracer.invoke(b):
            model.output.sum().backward()
    # by hand: only b's rows contribute to the weight gradient (a's output is not in the loss here)
    reference = net[0].weight.detach().clone().requires_grad_(True)
    hidden = torch.nn.functional.linear(b, reference, net[0].bias)
    net[2](net[1](hidden)).sum().backward()
    torch.testing.assert_close(weight.grad, reference.grad)


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["namedtuple", "dict", "dataclass", "modeloutput"])
def test_structured_model_outputs_are_narrowed_and_edited_per_invoke(kind):
    net = Pair(kind)
    model = NNsight(net)
    a, b = rows()
    with model.trace() as tracer:
        with tracer.invoke(a):
            out_a = model.output.save()
        with tracer.invoke(b):
            model.a.output[:] = 0
            out_b = model.output.save()
    torch.testing.assert_close(logits_of(kind, out_a.value), logits_of(kind, net(a)))
    zeros = net.b(torch.zeros(3, 3))
    torch.testing.assert_close(logits_of(kind, out_b.value), zeros)
    assert type(out_a.value) is type(net(a))


# 3 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(smol_tokenizer):
    return LanguageModel(tiny_llama(smol_tokenizer, 2), tokenizer=smol_tokenizer)


@pytest.mark.parametrize("settings", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}])
def test_generation_with_copies_of_rows_edits_only_the_invokes_copies(llama, settings):
    prompts = ["The cat sat", "Hello there my friend"]
    torch.manual_seed(0)
    with llama.generate(max_new_tokens=2, **settings) as tracer:
        with tracer.invoke(prompts[0]):
            llama.model.layers[0].output[:] = 0
            first = llama.model.layers[1].output.save()
        with tracer.invoke(prompts[1]):
            second = llama.model.layers[1].output.save()
    torch.manual_seed(0)
    with llama.generate(prompts[1], max_new_tokens=2, **settings):
        alone = llama.model.layers[1].output.save()
    copies = 2
    assert first.shape[0] == copies and second.shape[0] == copies
    width = alone.shape[1]
    torch.testing.assert_close(second.value[:, -width:], alone.value)


# 4 ------------------------------------------------------------------------------------------------
class Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.inner(x) * scale


def test_invokes_with_different_keyword_values_raise_naming_the_keyword():
    model = NNsight(Scaled())
    a, b = rows()
    with pytest.raises(TypeError, match="keyword 'scale'"):
        with model.trace() as tracer:
            with tracer.invoke(a, scale=1.0):
                model.output.save()
            with tracer.invoke(b, scale=3.0):
                model.output.save()
    with model.trace() as tracer:  # equal keywords batch fine
        with tracer.invoke(a, scale=3.0):
            out_a = model.output.save()
        with tracer.invoke(b, scale=3.0):
            out_b = model.output.save()
    torch.testing.assert_close(out_a.value, model._model(a, 3.0))
    torch.testing.assert_close(out_b.value, model._model(b, 3.0))


# 5 ------------------------------------------------------------------------------------------------
def test_a_tensor_made_inside_the_trace_can_be_an_invoke_input(tiny, net):
    torch.manual_seed(5)
    with tiny.trace() as tracer:
        with tracer.invoke(torch.ones(1, 5) * 2):
            made = tiny.output.save()
        with tracer.invoke(torch.zeros(2, 5)):
            other = tiny.output.save()
    torch.testing.assert_close(made.value, net(torch.ones(1, 5) * 2))
    torch.testing.assert_close(other.value, net(torch.zeros(2, 5)))


# 6 ------------------------------------------------------------------------------------------------
def test_a_trace_inside_a_trace_is_a_clear_error(tiny, x):
    with pytest.raises(TraceError, match="cannot be opened inside another trace"):
        with tiny.trace(x):
            with tiny.trace(x):
                pass
    with tiny.trace(x):  # and the next trace works
        out = tiny.output.save()
    assert out.shape == (1, 2)


# 7, 8 --------------------------------------------------------------------------------------------
def test_reentering_a_finished_trace_is_an_error_and_leaves_the_process_clean(tiny, x):
    tracer = tiny.trace(x)
    with tracer:
        tiny.output.save()
    with pytest.raises(TraceError, match="already been used"):
        with tracer:
            pass
    assert gc.isenabled()
    assert nnglass.apply(sum, [1, 2]) == 3


def test_a_failed_enter_leaves_nothing_patched(tiny):
    with pytest.raises(Exception):
        with tiny.scan(torch.rand(1, 7)):  # the wrong width for layer1
            pass
    assert isinstance(torch.randn(2), torch.Tensor) and gc.isenabled()
    assert nnglass.apply(sum, [1, 2]) == 3


# 9 ------------------------------------------------------------------------------------------------
def test_torch_function_of_an_old_saved_value_and_a_live_proxy(tiny, net, x):
    with tiny.trace(x):
        old = tiny.layer1.output.save()
    with tiny.trace(x):
        summed = torch.add(old, tiny.layer1.output).save()
    torch.testing.assert_close(summed.value, net.layer1(x) * 2)


# 10 -----------------------------------------------------------------------------------------------
def test_a_property_that_fails_raises_at_once_instead_of_recording(tiny):
    with tiny.session():
        items = nnglass.list().save()
        with pytest.raises(TraceError, match="shape"):
            items.shape


# 11 -----------------------------------------------------------------------------------------------
def test_star_import_shadows_no_builtin():
    scope: dict = {}
    exec("from nnglass import *", scope)
    assert not {"list", "dict", "int", "str", "tuple", "set", "bool", "float"} & set(scope)
    assert nnglass.list is not list and nnglass.list([1]) == [1]


# 12 -----------------------------------------------------------------------------------------------
def test_calling_a_module_inside_a_session_body(tiny, net, x):
    with tiny.session():
        with tiny.trace(x):
            hidden = tiny.layer1.output
        out = tiny.layer2(hidden).save()
    torch.testing.assert_close(out.value, net(x))


# 13 -----------------------------------------------------------------------------------------------
def test_a_typo_in_a_cache_path_raises_naming_the_modules(tiny, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache().save()
    with pytest.raises(AttributeError, match="no module 'layr1'"):
        cache.layr1.output
    torch.testing.assert_close(cache.value.layer1.output, tiny._model.layer1(x))


# 14 -----------------------------------------------------------------------------------------------
def test_model_edits_apply_at_every_generation_step(llama):
    with llama.edit() as edited:
        llama.model.layers[0].mlp.output[:] = 0
    handle = llama._model.model.layers[0].mlp.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
    try:
        with llama.generate("The cat sat", max_new_tokens=3):
            expected = llama.generator.output.save()
    finally:
        handle.remove()
    with edited.generate("The cat sat", max_new_tokens=3):
        got = edited.generator.output.save()
    assert torch.equal(got.value, expected.value)


# 15 -----------------------------------------------------------------------------------------------
def test_call_indices_are_per_invoke(llama):
    prompts = ["The cat sat", "Hello there"]
    with llama.generate(max_new_tokens=3) as tracer:
        with tracer.invoke(prompts[0]):
            llama.lm_head.next()
            llama.lm_head.next()
            third_a = llama.lm_head.output.save()
        with tracer.invoke(prompts[1]):
            first_b = llama.lm_head.output.save()
    with llama.generate(prompts[1], max_new_tokens=3):
        alone = llama.lm_head.output.save()
    assert third_a.shape[1] == 1          # a generated step: one new position
    width = alone.shape[1]
    torch.testing.assert_close(first_b.value[:, -width:], alone.value)  # the prompt pass, not step 3


# 16 -----------------------------------------------------------------------------------------------
def test_a_tensor_keyword_in_only_one_invoke_is_a_clear_error():
    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(4, 2)

        def forward(self, x, mask=None):
            return self.inner(x) if mask is None else self.inner(x) * mask

    model = NNsight(Masked())
    a, b = rows()
    with pytest.raises(TypeError, match="keyword 'mask' is given in some invokes but not in others"):
        with model.trace() as tracer:
            with tracer.invoke(a, mask=torch.ones(2, 2)):
                model.output.save()
            with tracer.invoke(b):
                model.output.save()


def test_a_second_wrapper_does_not_break_the_first(smol_tokenizer):
    hf = tiny_llama(smol_tokenizer, 1)
    first = LanguageModel(hf, tokenizer=smol_tokenizer)
    second = LanguageModel(hf, tokenizer=smol_tokenizer)
    assert not hasattr(hf, "generator")  # the user's model is not changed
    with first.generate("Hi", max_new_tokens=2):
        one = first.generator.output.save()
    with second.generate("Hi", max_new_tokens=2):
        two = second.generator.output.save()
    assert torch.equal(one.value, two.value) and one.shape[1] > 1



def test_another_models_modules_are_refused_inside_a_trace_a_wrapper_of_the_same_net_is_not(net, x):
    other = NNsight(make_net())  # the same module names and shapes: reading it here would read `net`
    model, again = NNsight(net), NNsight(net)
    for misuse in (lambda: other.layer1.output, lambda: other.layer2(model.layer1.output)):
        with pytest.raises(TraceError, match="belongs to another model"):
            with model.trace(x):
                misuse()
    with model.trace(x):
        hidden = again.layer1.output.save()  # another wrapper of the very same net: its modules are these
    assert torch.equal(hidden, net.layer1(x))

# the scan -------------------------------------------------------------------------------------------
def test_a_scan_leaves_buffers_and_random_state_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)).train()
    model = NNsight(net)
    x = torch.rand(3, 4)
    stats = net[1].running_mean.clone()
    state = torch.random.get_rng_state()
    with model.scan(x):
        shape = model[1].output.shape
    assert shape == (3, 4)
    assert torch.equal(net[1].running_mean, stats) and torch.equal(torch.random.get_rng_state(), state)


def test_the_shape_cache_is_bounded(tiny):
    for size in range(1, 20):
        with tiny.scan(torch.rand(size, 5)):
            assert tiny.layer1.output.shape == (size, 10)
    assert len(tiny._scans.entries) <= tiny._scans.size


def test_no_torch_function_stays_patched_after_a_trace(tiny, x):
    originals = (torch.arange, torch.randn, torch.nn.Parameter.__new__, torch.optim.AdamW)
    with tiny.trace(x):
        tiny.output.save()
    assert (torch.arange, torch.randn, torch.nn.Parameter.__new__, torch.optim.AdamW) == originals
