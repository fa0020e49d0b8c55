"""Deterministic performance rules, asserted: hooks left, hooks placed, Python calls per untouched module
and per node, the shape cache's bound. Timings are benchmarks (benchmarks/), not tests."""
import gc
import sys
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from nnglass import NNsight
from nnglass.intervention.fake import _Meta


@pytest.fixture
def deep():
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(5, 5) for _ in range(12))).requires_grad_(False)


def hooks(net: torch.nn.Module) -> int:
    """Hooks on net's modules, and global module hooks."""
    global_hooks = torch.nn.modules.module
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(m._backward_pre_hooks) for m in net.modules())
            + len(global_hooks._global_forward_hooks) + len(global_hooks._global_forward_pre_hooks))


def count_calls(fn) -> int:
    """Python and C function calls made by one call of fn (a deterministic measure of work)."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    gc.collect()  # a collection during the count would add the calls of whatever it frees
    enabled = gc.isenabled()
    gc.disable()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return calls


def test_no_hooks_left_after_traces(deep):
    model = NNsight(deep)
    x = torch.rand(2, 5)
    with model.trace(x):
        model[3].output.save()
    with model.trace(x):
        model[3].output[:, 0] = 0
        model[5].input.save()
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model[2].output.save()
        with tracer.invoke(x[1:]):
            model[4].output.save()
    with model.trace(x) as tracer:
        model[1].output.save()
        tracer.stop()
    assert hooks(deep) == 0


def test_no_hooks_left_after_an_error_in_the_body(deep):
    model = NNsight(deep)
    with pytest.raises(ValueError):
        with model.trace(torch.rand(1, 5)):
            model[3].output.save()
            raise ValueError("in the body")
    assert hooks(deep) == 0


def test_no_hooks_left_after_an_error_while_running(deep):
    model = NNsight(deep)
    with pytest.raises(RuntimeError):
        with model.trace(torch.rand(1, 5)):
            model[0].output.reshape(7, 7).save()
            model[8].output.save()
    assert hooks(deep) == 0


def test_hooks_only_on_referenced_modules(deep, monkeypatch):
    model = NNsight(deep)
    hooked = []

    def spy(original):
        def register(module, *args, **kwargs):
            hooked.append(module)
            return original(module, *args, **kwargs)
        return register

    for name in ("register_forward_hook", "register_forward_pre_hook"):
        monkeypatch.setattr(torch.nn.Module, name, spy(getattr(torch.nn.Module, name)))
    with model.trace(torch.rand(1, 5)):
        model[2].output.save()
        model[7].input.save()
    assert set(map(id, hooked)) == {id(deep[2]), id(deep[7])}


def extra_calls(n: int) -> int:
    """Calls a trace saving module n//2's output adds to the plain forward of a Sequential of n modules."""
    module = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(n))).requires_grad_(False)
    model = NNsight(module)
    x = torch.rand(1, 2)

    def trace():
        with model.trace(x):
            model[n // 2].output.save()

    trace()  # first use: envoys and caches
    # the least of three counts: a finalizer of an earlier test's object may run inside one of them
    return min(count_calls(trace) for _ in range(3)) - min(count_calls(lambda: module(x)) for _ in range(3))


def test_python_calls_of_a_trace_do_not_grow_with_untouched_modules():
    assert len({extra_calls(n) for n in (250, 500, 1000, 2000)}) == 1


def chain_calls(ops: int) -> tuple[int, int]:
    """Graph nodes and calls of a trace of ops operations on the tiny net's first output."""
    model = NNsight(torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2)).requires_grad_(False))
    x = torch.rand(1, 5)
    nodes = []

    def trace():
        with model.trace(x) as tracer:
            h = model[0].output
            for _ in range(ops):
                h = h + 1
            h.save()
        nodes.append(len(tracer.graph.nodes))

    trace()
    return nodes[0], count_calls(trace)


def test_graph_cost_is_linear_in_nodes():
    (n1, c1), (n2, c2), (n4, c4) = (chain_calls(ops) for ops in (100, 200, 400))
    assert n4 - n2 == 2 * (n2 - n1) == 200
    assert c4 - c2 == 2 * (c2 - c1)


def live_fakes() -> int:
    """Fake and meta tensors and tensor records alive after a collection (what the shape cache keeps)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gc sees deprecated torch objects
        return sum(1 for obj in gc.get_objects()
                   if isinstance(obj, (FakeTensor, _Meta)) or isinstance(obj, torch.Tensor) and obj.is_meta)


def test_shape_cache_is_bounded(deep):
    model = NNsight(deep)

    def shapes(batches):
        for batch in batches:
            with model.trace(torch.rand(batch, 5)):
                model[3].output.shape

    shapes(range(1, 21))
    kept = live_fakes()
    shapes(range(21, 41))
    assert 0 < live_fakes() <= kept
