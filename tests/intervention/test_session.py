"""Sessions, loops, builtins, training and persistent edits, against the eager network."""
import pytest
import torch
from torch.utils.data import DataLoader

import nnglass
from nnglass import NNsight, TraceError


def test_value_crosses_traces_without_save(tiny, net, x):
    y = x * 2
    with tiny.session():
        with tiny.trace(x):
            hidden = tiny.layer1.output[:, :]
        with tiny.trace(y):
            tiny.layer1.output[:] = hidden
            out = tiny.output.save()
    assert torch.equal(out.value, net(x))
    with pytest.raises(ValueError):
        hidden.value  # not saved: gone after the session


def test_traces_on_two_models_in_one_session(net, x):
    other = torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2)).requires_grad_(False)
    first, second = NNsight(net), NNsight(other)
    with first.session():
        with first.trace(x):
            hidden = first.layer1.output
        with second.trace(x):
            second[0].output = hidden
            out = second.output.save()
    assert torch.allclose(out.value, other[1](net.layer1(x)))


def test_session_log_and_exit(tiny, capsys):
    with tiny.session() as session:
        session.log("-- Early Stop --")
        session.exit()
        session.log("never printed")
    assert capsys.readouterr().out == "-- Early Stop --\n"


def test_session_value_read_inside_the_session_is_a_clear_error(tiny, x):
    with pytest.raises(ValueError, match="Nothing has run yet"):
        with tiny.session():
            with tiny.trace(x):
                out = tiny.output.save()
            out.value


def test_nested_loops_over_a_traceable_list(tiny):
    with tiny.session() as session:
        li = nnglass.list()
        [li.append([num]) for num in range(0, 3)]
        li2 = nnglass.list().save()
        with session.iter(li) as item:
            with session.iter(item) as item_2:
                li2.append(item_2)
    assert li2.value == [0, 1, 2]


def test_loop_exit_and_cond(tiny, capsys):
    with tiny.session() as session:
        with session.iter([0, 1, 2, 3], return_context=True) as (item, iterator):
            iterator.log(item)
            with iterator.cond(item == 2):
                iterator.exit()
    assert capsys.readouterr().out == "0\n1\n2\n"


def test_iterator_exit_outside_its_loop_is_an_error(tiny):
    with pytest.raises(TraceError, match="only inside its"):
        with tiny.session() as session:
            with session.iter([1], return_context=True) as (item, iterator):
                pass
            iterator.exit()


def test_loop_of_traces_runs_each_trace_per_item(tiny, net):
    inputs = [torch.rand(1, 5) for _ in range(3)]
    with tiny.session() as session:
        outs = nnglass.list().save()
        with session.iter(inputs) as item:
            with tiny.trace(item):
                outs.append(tiny.output)
    assert all(torch.equal(o, net(i)) for o, i in zip(outs.value, inputs))


@pytest.mark.parametrize("name, value", [("int", 3), ("float", 2.5), ("str", "a"), ("bool", True),
                                         ("tuple", (1,)), ("set", {1}), ("dict", {"a": 1}),
                                         ("bytes", b"x"), ("bytearray", bytearray(b"x")), ("complex", 1j)])
def test_builtins_make_traceable_values(tiny, name, value):
    with tiny.session():
        made = getattr(nnglass, name)(value).save()
    assert made.value == value and type(made.value) is type(value)


def test_training_in_a_session_lowers_the_loss(tiny, net, x):
    torch.manual_seed(0)
    data = DataLoader([[x[0], 0]] * 10, batch_size=2)
    with tiny.session() as session:
        weight = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=True).save()
        optimizer = torch.optim.SGD([weight], lr=0.1)
        losses = nnglass.list().save()
        with session.iter(data) as batch:
            with tiny.trace(batch[0]):
                loss = ((tiny.output @ weight - 1.0) ** 2).mean()
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
    # the same training by hand
    eager = torch.zeros(2, 2, requires_grad=True)
    expected = []
    for inputs, _ in data:
        loss = ((net(inputs) @ eager - 1.0) ** 2).mean()
        loss.backward()
        expected.append(loss.item())
        with torch.no_grad():
            eager -= 0.1 * eager.grad
        eager.grad = None
    assert losses.value == pytest.approx(expected)
    assert losses.value[-1] < losses.value[0]
    assert torch.allclose(weight.value, eager)


def test_edit_returns_an_edited_copy(tiny, net, x):
    y = x * 3
    with tiny.trace(x):
        hidden = tiny.layer1.output.clone().save()
    with tiny.edit() as edited:
        tiny.layer1.output[:] = hidden
    with tiny.trace(y):
        original = tiny.output.save()
    with edited.trace(y):
        changed = tiny.output.save()
        doubled = (tiny.layer2.output * 2).save()  # a trace's own interventions compose with edits
    assert torch.equal(original.value, net(y))
    assert torch.equal(changed.value, net(x)) and torch.equal(doubled.value, net(x) * 2)


def test_inplace_edit_and_clear_edits(tiny, net, x):
    y = x * 3
    with tiny.edit(inplace=True):
        tiny.layer2.output[:] = 0
    with tiny.trace(y):
        edited = tiny.output.save()
    tiny.clear_edits()
    with tiny.trace(y):
        cleared = tiny.output.save()
    assert torch.equal(edited.value, torch.zeros(1, 2))
    assert torch.equal(cleared.value, net(y))


def test_cache_collects_listed_modules_by_path(tiny, net, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache(modules=[tiny.layer1]).save()
    assert list(cache.keys()) == ["model.layer1"]  # nnsight's keys: envoy paths from the root
    assert torch.equal(cache["layer1"].output, net.layer1(x))
    assert torch.equal(cache.layer1.output, net.layer1(x))


def test_cache_of_all_modules_with_inputs(tiny, net, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache(include_inputs=True).save()
    assert set(cache.keys()) == {"model", "model.layer1", "model.layer2"}
    assert torch.equal(cache["layer2"].input, net.layer1(x))
    assert torch.equal(cache[""].output, net(x))


def test_cache_hooks_only_listed_modules(tiny, net, x):
    during = []
    net.layer2.register_forward_pre_hook(
        lambda *a: during.append((len(net.layer1._forward_hooks), len(net.layer2._forward_hooks))))
    with tiny.trace(x) as tracer:
        tracer.cache(modules=[tiny.layer2])
    assert during == [(0, 1)]


def test_shape_of_an_earlier_traces_value_in_the_session_body(tiny, net, x):
    with tiny.session():
        with tiny.trace(x):
            hidden = tiny.layer1.output
        shape, dtype = hidden.shape, hidden.dtype
    assert shape == net.layer1(x).shape and dtype == net.layer1(x).dtype


def test_shape_of_an_earlier_traces_value_read_in_a_later_trace_is_that_traces(tiny, net, x):
    wider = torch.rand(7, 5)
    with tiny.session():
        with tiny.trace(x):
            hidden = tiny.layer1.output
        with tiny.trace(wider):
            earlier, later = hidden.shape, tiny.layer1.output.shape
    assert earlier == net.layer1(x).shape and later == net.layer1(wider).shape


def test_shape_of_a_session_value_is_a_clear_error(tiny):
    with pytest.raises(TraceError, match="not a value of a trace"):
        with tiny.session() as session:
            session.apply(list).shape


def test_cache_entries_hold_the_values_after_the_blocks_edits(tiny, net, x):
    """As nnsight (its cache hooks run after the intervention's): a swap recorded after `tracer.cache()`
    is what the cache holds, and what the next module gets."""
    with tiny.trace(x) as tracer:
        cache = tracer.cache()
        tiny.layer1.output = tiny.layer1.output * 0 + 1
    assert torch.equal(cache["model.layer1"].output, torch.ones(1, 10))
    assert torch.equal(cache["model.layer2"].output, net.layer2(torch.ones(1, 10)))


def test_a_stop_after_the_cache_keeps_what_ran_before_it(tiny, net, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache(modules=[tiny.layer1])
        tiny.layer1.output.stop()
        tracer.stop()
    assert torch.equal(cache["model.layer1"].output, net.layer1(x))


def test_a_cache_index_of_a_module_that_is_not_a_list_is_a_key_error(tiny, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache()
    with pytest.raises(KeyError, match="'model' is not a list of modules"):
        cache.model[3]
    with pytest.raises(AttributeError, match="no module 'model.layer9'"):
        cache.model.layer9
    assert cache.model.layer1.output.shape == (1, 10)  # the cache still answers


def test_a_cache_reaches_by_attribute_only_what_it_holds(tiny, x):
    with tiny.trace(x) as tracer:
        cache = tracer.cache(modules=[tiny.layer1])
    with pytest.raises(AttributeError, match="Module 'model.layer2' was not cached"):
        cache.model.layer2
    with pytest.raises(KeyError, match="'model.layer1' is not a list of modules"):
        cache.model.layer1[0]
    torch.testing.assert_close(cache.model.layer1.output, tiny._model.layer1(x))  # the cache still answers
