"""The scan: early-stopped records, partial cache entries extended, no hooks left, the cache bounded."""
import pytest
import torch

from nnglass import LanguageModel, NNsight, TraceError
from tests.conftest import make_net, tiny_llama


def deep_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(5 + i, 6 + i) for i in range(6)])


def hooks(net: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_an_early_stopped_scan_then_a_later_module_gives_the_eager_shape():
    net = deep_net()
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        first = model[0].output.shape
        last = model[5].output.shape
        inputs = model[3].input.shape
    assert first == net[0](x).shape and last == net(x).shape and inputs == net[:3](x).shape
    assert hooks(net) == 0


def test_a_partial_entry_is_extended_and_a_complete_one_reports_a_missing_call():
    model = NNsight(deep_net())
    x = torch.rand(3, 5)
    with model.trace(x):
        model[1].output.shape
    (records,) = model._scans.entries.values()
    assert not records.complete and (("5", "output", 0) not in records)
    with model.trace(x):
        assert model[4].output.shape == (3, 10)
    (records,) = model._scans.entries.values()
    assert records.complete


def test_invokes_of_different_lengths_stop_on_their_own():
    model = NNsight(deep_net())
    a, b = torch.rand(1, 5), torch.rand(4, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            one = model[2].output.shape
        with tracer.invoke(b):
            four = model[5].output.shape
    assert one == (1, 8) and four == (4, 11)


def test_the_cache_stays_bounded_with_partial_entries():
    model = NNsight(deep_net())
    for batch in range(1, 20):
        with model.trace(torch.rand(batch, 5)):
            model[batch % 6].output.shape
    assert len(model._scans.entries) <= model._scans.size


def test_shapes_in_generate_are_those_of_each_generation_step(smol_tokenizer):
    lm = LanguageModel(tiny_llama(smol_tokenizer, 2), tokenizer=smol_tokenizer)
    with lm.generate("Hello world", max_new_tokens=3, do_sample=False):
        head = lm.lm_head.output.shape  # generate computes the logits of the last token only
        first = lm.lm_head.output.save()
        step = lm.model.layers[0].next().output.shape
        second = lm.model.layers[0].output.save()
    assert head == first.shape == (1, 1, len(smol_tokenizer))
    assert step == second.shape == (1, 1, 32)


def test_after_a_scan_block_each_modules_shapes_are_readable(tiny, net, x):
    """As nnsight: a scan leaves every module's fake value (at its first call) readable after the block."""
    with tiny.scan(x):
        pass
    assert tiny.layer1.output.shape == net.layer1(x).shape
    assert tiny.layer2.input.shape == net.layer1(x).shape
    with pytest.raises(TraceError, match="exist only inside"):
        NNsight(make_net()).layer1.output  # a model never scanned: a clear error
