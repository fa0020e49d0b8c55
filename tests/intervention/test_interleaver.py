"""Invokes, call indices, causality and memory: each checked against the eager model (hook rules: test_performance_rules.py)."""
import gc
import threading
import warnings
import weakref

import pytest
import torch

import nnglass
from nnglass import CausalityError, NNsight


@pytest.fixture
def three():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2)).requires_grad_(False)


def test_invokes_run_as_one_batch(three):
    calls = []
    three[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    model = NNsight(three)
    a, b = torch.rand(2, 5), torch.rand(3, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            out_a = model.output.save()
        with tracer.invoke(b):
            out_b = model.output.save()
            hidden_b = model[0].output.save()
    assert calls == [5]  # one forward over the concatenated batch
    assert torch.allclose(out_a.value, three(a)) and torch.allclose(out_b.value, three(b))
    assert torch.allclose(hidden_b.value, three[0](b))


def test_invoke_edits_only_its_rows(three):
    model = NNsight(three)
    a, b = torch.rand(2, 5), torch.rand(3, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            model[0].output[:] = 0
            out_a = model.output.save()
        with tracer.invoke(b):
            out_b = model.output.save()
    assert torch.allclose(out_a.value, three[2](torch.zeros(2, 10)).expand(2, 2))
    assert torch.allclose(out_b.value, three(b))


def test_value_crosses_invokes(three):
    model = NNsight(three)
    a, b = torch.rand(1, 5), torch.rand(1, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            hidden_a = model[0].output
        with tracer.invoke(b):
            model[0].output = hidden_a * 1.0
            out_b = model.output.save()
        with tracer.invoke(b):
            out_plain = model.output.save()
    assert torch.allclose(out_b.value, three(a))
    assert torch.allclose(out_plain.value, three(b))


def test_invoker_args_and_implicit_invoker(three):
    model = NNsight(three)
    x = torch.rand(1, 5)
    with model.trace(invoker_args={}) as tracer:
        with tracer.invoke(x) as invoker:
            out = model.output.save()
    assert invoker.inputs[0][0] is x
    with model.trace(x) as tracer:
        assert tracer.invoker.inputs[0][0] is x
    assert torch.allclose(out.value, three(x))


def test_trace_false_returns_output(three):
    model = NNsight(three)
    x = torch.rand(2, 5)
    assert torch.equal(model.trace(x, trace=False), three(x))


class Twice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.layer(self.layer(x))


def test_call_index_next_and_all():
    torch.manual_seed(0)
    module = Twice()
    model = NNsight(module)
    x = torch.rand(1, 4)
    with model.trace(x):
        first = model.layer.output.save()
        second = model.layer.next().output.save()
    assert torch.equal(first.value, module.layer(x))
    assert torch.equal(second.value, module(x))
    with model.trace(x):
        model.layer.all().output[:] = 1.0
        out = model.output.save()
    assert torch.equal(out.value, torch.ones(1, 4))


def test_order_free_reading(three):
    model = NNsight(three)
    x = torch.rand(1, 5)
    with model.trace(x):
        late = model[2].output.save()
        early = model[0].output.save()
    assert torch.equal(late.value, three(x)) and torch.equal(early.value, three[0](x))


def test_edit_needing_a_later_value_names_both_lines(three):
    model = NNsight(three)
    with pytest.raises(CausalityError) as info:
        with model.trace(torch.rand(1, 5)):
            later = model[2].output.sum()
            model[0].output[:] = later
    message = str(info.value)
    assert "later = model[2].output.sum()" in message
    assert "model[0].output[:] = later" in message


def _live_tensors() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gc sees deprecated torch objects
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_thousand_traces_leave_nothing_behind(three):
    model = NNsight(three)
    x = torch.rand(1, 5)
    for _ in range(10):
        with model.trace(x):
            model[0].output.save()
    gc.collect()
    before = _live_tensors()
    for _ in range(1000):
        with model.trace(x):
            out = model[0].output.save()
    del out
    gc.collect()
    assert _live_tensors() <= before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in three.modules())


def test_unsaved_values_are_freed_after_last_use(three):
    model = NNsight(three)
    x = torch.rand(1, 5)
    with model.trace(x):
        doubled = model[0].output * 2
        ref = nnglass.apply(weakref.ref, doubled)        # a weak reference to the doubled tensor
        alive = nnglass.apply(lambda ref: ref() is not None, ref).save()  # runs before doubled's last use
        summed = (doubled + 1).save()
        # when layer 2 runs, `doubled` has had its last use and must already be gone
        probe = nnglass.apply(lambda out, ref: ref() is None, model[2].output, ref).save()
    assert probe.value is True
    assert alive.value is True  # the probe would be vacuous if the reference never pointed anywhere
    assert torch.allclose(summed.value, three[0](x) * 2 + 1)


def test_two_threads_get_their_own_results(three):
    model = NNsight(three)
    errors = []

    def work(i: int) -> None:
        x = torch.full((1, 5), float(i))
        for _ in range(100):
            with model.trace(x):
                model[0].output[:] = model[0].output * i
                out = model.output.save()
            if not torch.allclose(out.value, three[2](three[1](three[0](x) * i))):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_assigning_input_and_inputs(three):
    model = NNsight(three)
    x, other = torch.rand(1, 5), torch.rand(1, 10)
    with model.trace(x):
        model[2].input = other
        seen = model[2].input.save()
        out = model.output.save()
    assert torch.equal(seen.value, other) and torch.equal(out.value, three[2](other))
    with model.trace(x):
        model[0].inputs = ((x * 2,), {})
        args = model[0].inputs.save()
        out = model.output.save()
    assert torch.equal(args.value[0][0], x * 2) and torch.equal(out.value, three(x * 2))


def test_swapped_output_in_one_invoke_keeps_the_other_rows(three):
    model = NNsight(three)
    a, b = torch.rand(2, 5), torch.rand(1, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            model[0].output = torch.zeros(2, 10)
            out_a = model.output.save()
        with tracer.invoke(b):
            out_b = model.output.save()
    assert torch.allclose(out_a.value, three[2](torch.zeros(2, 10)))
    assert torch.allclose(out_b.value, three(b))
