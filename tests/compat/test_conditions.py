"""Everything inside a false `tracer.cond` is skipped, module reads included (0.4)."""
import pytest
import torch

UNSET = "Accessing value before it's been set."


def test_a_save_inside_a_false_condition_stays_unset(tiny, net, x):
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() > 1e9):
            inside = tiny.layer2.output.save()
            hidden = tiny.layer1.output.save()
        after = tiny.layer2.output.save()
    for proxy in (inside, hidden):
        with pytest.raises(ValueError, match=UNSET):
            proxy.value
    assert torch.equal(after, net(x))


def test_nested_conditions(tiny, net, x):
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() > -1e9):
            outer = tiny.layer2.output.save()
            with tracer.cond(tiny.layer1.output.sum() > 1e9):
                inner = tiny.layer1.output.save()
            with tracer.cond(tiny.layer1.output.sum() > -1e9):
                both = tiny.layer1.output.save()
    assert torch.equal(outer, net(x)) and torch.equal(both, net.layer1(x))
    with pytest.raises(ValueError, match=UNSET):
        inner.value


def test_an_edit_inside_a_false_condition_changes_nothing_later(tiny, net, x):
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() > 1e9):
            tiny.layer2.output = tiny.layer2.output * 0
        out = tiny.layer2.output.save()
        final = tiny.output.save()
    assert torch.equal(out, net(x)) and torch.equal(final, net(x))
    with tiny.trace(x) as tracer:
        with tracer.cond(tiny.layer1.output.sum() > -1e9):
            tiny.layer2.output = tiny.layer2.output * 0
        final = tiny.output.save()
    assert torch.count_nonzero(final) == 0


def test_a_native_if_skips_its_reads_too(tiny, net, x):
    with tiny.trace(x):
        if tiny.layer1.output.sum() > 1e9:
            inside = tiny.layer2.output.save()
        after = tiny.output.save()
    assert torch.equal(after, net(x))
    with pytest.raises(ValueError, match=UNSET):
        inside.value
