"""Native Python in with-blocks compiled into graph constructs, and real values after the block.

Every value is compared with the eager network run with hand-written torch hooks.
"""
import copy
import io
import pickle
import runpy
import sys
import textwrap
from multiprocessing.reduction import ForkingPickler

import numpy
import pytest
import torch

import nnglass
from nnglass import NNsight, TraceError
from nnglass.tracing import compile
from nnglass.tracing.proxy import Proxy


def line_of(tag: str) -> int:
    """The line of this file that carries the comment `# <tag>`."""
    with open(__file__) as source:
        return next(number for number, text in enumerate(source, 1) if text.rstrip().endswith(f"# {tag}"))


def eager(net, x, edit=None):
    """The net's output (and layer1's output as the hook saw it), with layer1's output edited by edit."""
    seen = {}

    def hook(module, inputs, output):
        output = edit(output) if edit is not None else output
        seen["hidden"] = output
        return output
    handle = net.layer1.register_forward_hook(hook)
    try:
        return net(x), seen["hidden"]
    finally:
        handle.remove()


def test_if_on_a_proxy_edits_only_when_it_holds(tiny, net, x):
    total = net.layer1(x).sum().item()
    for threshold in (total - 1, total + 1):
        with tiny.trace(x):
            if tiny.layer1.output.sum() > threshold:
                tiny.layer1.output[:] = 0
            out = tiny.output.save()
        expected, _ = eager(net, x, (lambda h: h * 0) if total > threshold else None)
        assert torch.equal(out, expected)


def test_if_elif_else_on_proxies(tiny, net, x):
    total = net.layer1(x).sum().item()
    for low, high, factor in ((total + 1, total + 2, 3), (total - 1, total + 1, 2), (total - 2, total - 1, 1)):
        with tiny.trace(x):
            h = tiny.layer1.output
            if h.sum() > high:
                tiny.layer1.output[:] = h * 1
            elif h.sum() > low:
                tiny.layer1.output[:] = h * 2
            else:
                tiny.layer1.output[:] = h * 3
            out = tiny.output.save()
        assert torch.allclose(out, eager(net, x, lambda h: h * factor)[0])


def test_if_on_plain_values_is_plain_python(tiny, net, x):
    for flag in (True, False):
        with tiny.trace(x) as tracer:
            if flag:
                tiny.layer1.output[:] = 0
            else:
                pass
            out = tiny.output.save()
        assert not any(node.op == "cond" for node in tracer.graph.nodes)
        assert torch.equal(out, eager(net, x, (lambda h: h * 0) if flag else None)[0])


def test_not_and_or_on_proxy_conditions(tiny, net, x):
    hidden = net.layer1(x)
    with tiny.trace(x):
        h = tiny.layer1.output
        both = nnglass.list().save()
        if h.sum() > -100 and not h.max() > 100:
            both.append(1)
        if h.sum() > 100 or h.min() < -100:
            both.append(2)
        if True and h.sum() > -100:
            both.append(3)
    expected = [n for n, holds in ((1, hidden.sum() > -100 and not hidden.max() > 100),
                                   (2, hidden.sum() > 100 or hidden.min() < -100), (3, True)) if holds]
    assert both == expected


def test_nested_ifs_on_proxies(tiny, net, x):
    total = net.layer1(x).sum().item()
    with tiny.trace(x):
        h = tiny.layer1.output
        if h.sum() > total - 1:
            if h.sum() > total + 1:
                tiny.layer1.output[:] = 0
            else:
                tiny.layer1.output[:] = h * 2
        out = tiny.output.save()
    assert torch.allclose(out, eager(net, x, lambda h: h * 2)[0])


@pytest.fixture
def deep():
    torch.manual_seed(2)
    layers = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(3))).requires_grad_(False)
    return layers, NNsight(layers)


def eager_layers(layers, x, edits):
    """The stack's output with the hook edit(i, output) on every layer i."""
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: edits(n, o)) for n, layer in enumerate(layers)]
    try:
        return layers(x)
    finally:
        for handle in handles:
            handle.remove()


def test_range_loop_over_layers_with_edits_break_and_continue(deep):
    layers, model = deep
    x = torch.rand(2, 4)
    with model.trace(x):
        for i in range(5):
            if i == 1:
                continue
            if i == 3:
                break
            model[i].output[:] = model[i].output * (i + 2)
        out = model.output.save()
    assert torch.allclose(out, eager_layers(layers, x, lambda n, o: o * (n + 2) if n in (0, 2) else o))


def test_nested_loops_with_edits(deep):
    layers, model = deep
    x = torch.rand(2, 4)
    with model.trace(x):
        for i in range(3):
            for j in range(4):
                if j % 2 == 0:
                    model[i].output[:, j] = 0
        out = model.output.save()

    def zero_even(n, o):
        o = o.clone()
        o[:, ::2] = 0
        return o
    assert torch.allclose(out, eager_layers(layers, x, zero_even))


def test_break_under_a_proxy_condition_in_a_trace_loop(deep):
    layers, model = deep
    x = torch.rand(2, 4)
    sums = []
    eager_layers(layers, x, lambda n, o: sums.append((o * 2).sum().item()))
    for threshold in (min(sums) - 1e3, sums[1] - 1e-3 if sums[1] > sums[0] else max(sums) + 1e3, max(sums) + 1e3):
        with model.trace(x):
            for i in range(3):
                model[i].output[:] = model[i].output * 2
                if model[i].output.sum() > threshold:
                    break
            else:
                model[2].output[:] = 0
            out = model.output.save()
        state = {"stopped": False}

        def edit(n, o):
            if state["stopped"]:
                return o
            o = o * 2
            state["stopped"] = o.sum().item() > threshold
            return o * 0 if n == 2 and not state["stopped"] else o
        assert torch.allclose(out, eager_layers(layers, x, edit)), threshold


def test_continue_under_a_proxy_condition_in_a_trace_loop(deep):
    layers, model = deep
    x = torch.rand(2, 4)
    with model.trace(x):
        for i in range(3):
            if model[i].output.sum() > 0:
                continue
            model[i].output[:] = 0
        out = model.output.save()
    assert torch.allclose(out, eager_layers(layers, x, lambda n, o: o if o.sum() > 0 else o * 0))


def test_continue_and_break_in_a_session_loop(tiny):
    with tiny.session():
        got = nnglass.list().save()
        for item in nnglass.list([1, 2, 3, 4]):
            if item == 2:
                continue
            if item == 4:
                break
            got.append(item)
    assert got == [1, 3]


def test_for_over_a_proxy_in_a_trace_is_unrolled_by_its_shape(tiny, net, x):
    with tiny.trace(x) as tracer:
        rows = []
        for row in tiny.layer1.output[0]:
            if row > 0:
                tracer.log("positive")
            rows.append(row.save())
    hidden = net.layer1(x)[0]
    assert len(rows) == hidden.shape[0]
    assert all(torch.equal(r, h) for r, h in zip(rows, hidden))


def test_loop_targets_unpack_proxy_items(tiny, net, x):
    with tiny.trace(x):
        pairs = tiny.layer1.output.reshape(5, 2)
        firsts = []
        for first, second in pairs:
            firsts.append((first - second).save())
    pairs = net.layer1(x).reshape(5, 2)
    assert all(torch.equal(got, a - b) for got, (a, b) in zip(firsts, pairs))
    with tiny.session():
        sums = nnglass.list().save()
        for a, b in nnglass.list([(1, 2), (3, 4)]):
            sums.append(a + b)
    assert sums == [3, 7]


def test_for_over_a_proxy_in_a_session_is_a_session_loop(tiny):
    with tiny.session():
        items = nnglass.list([1, 2, 3, 4])
        got = nnglass.list().save()
        for item in items:
            if item == 3:
                break
            got.append(item * 10)
    assert got == [10, 20]


def test_nested_loops_over_proxies_in_a_session(tiny):
    with tiny.session():
        rows = nnglass.list([[1, 2], [3]])
        flat = nnglass.list().save()
        for row in rows:
            for item in row:
                flat.append(item)
    assert flat == [1, 2, 3]


def test_loop_of_traces_over_a_plain_list_in_a_session(tiny, net):
    inputs = [torch.rand(1, 5) for _ in range(3)]
    with tiny.session():
        outs = []
        for batch in inputs:
            with tiny.trace(batch):
                if tiny.layer1.output.sum() > 0:
                    tiny.layer1.output[:] = 0
                outs.append(tiny.output.save())
    for batch, out in zip(inputs, outs):
        positive = net.layer1(batch).sum() > 0
        assert torch.equal(out, eager(net, batch, (lambda h: h * 0) if positive else None)[0])


def test_print_of_proxies_prints_real_values_when_the_graph_runs(tiny, net, x, capsys):
    with tiny.trace(x):
        h = tiny.layer1.output
        print("before")
        print("hidden sum", h.sum())
        print(f"max {h.max():.3f}, argmax {h.argmax()!r}")
        if h.sum() > 1e6:
            print("never")
    hidden = net.layer1(x)
    assert capsys.readouterr().out == (f"before\nhidden sum {hidden.sum()!s}\n"
                                       f"max {hidden.max():.3f}, argmax {hidden.argmax()!r}\n")


def test_fstring_of_a_proxy_is_a_saved_string(tiny, net, x):
    width = 8
    with tiny.trace(x):
        text = nnglass.save(f"{{out}} = {tiny.output.sum():>{width}.2f}")
        plain = f"width {width}"
    assert plain == "width 8"
    assert text == f"{{out}} = {net(x).sum():>8.2f}" and isinstance(text, str)


def test_lists_and_dicts_of_saved_proxies_become_real_values(tiny, net, x):
    with tiny.trace(x):
        hidden = []
        named = {}
        hidden.append(tiny.layer1.output.save())
        named["out"] = tiny.output.save()
        pair = (tiny.layer1.output.sum().save(), 3)
    expected, seen = eager(net, x)
    assert type(hidden) is list and torch.equal(hidden[0], seen)
    assert type(named["out"]) is torch.Tensor and torch.equal(named["out"], expected)
    assert torch.equal(pair[0], seen.sum()) and pair[1] == 3


def test_nnglass_save_of_a_list_saves_what_is_appended_later(tiny, net, x):
    with tiny.trace(x):
        outs = nnglass.save([])
        for _ in range(2):
            outs.append(tiny.layer1.output)
    assert len(outs) == 2 and all(torch.equal(o, net.layer1(x)) for o in outs)


def test_saved_tensors_are_real_tensors(tiny, net, x):
    with tiny.trace(x):
        out = tiny.output.save()
        hidden = tiny.layer1.output.save()
    expected = net(x)
    assert type(out) is torch.Tensor and isinstance(hidden, torch.Tensor)
    assert out.value is out  # nnsight 0.4 code keeps working
    buffer = io.BytesIO()
    torch.save({"out": out}, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer)["out"], expected)
    assert torch.equal(pickle.loads(pickle.dumps(out)), expected)
    assert torch.equal(pickle.loads(ForkingPickler.dumps(out)), expected)  # what multiprocessing sends
    assert torch.equal(copy.deepcopy(out), expected)
    assert numpy.allclose(out.numpy(), expected.numpy())


def test_saved_python_values_are_real_and_keep_value(tiny):
    with tiny.session():
        number = nnglass.int(3).save()
        items = nnglass.list([1, 2]).save()
        flag = nnglass.bool(1).save()
    assert isinstance(number, int) and number + 1 == 4 and type(number.value) is int
    assert isinstance(items, list) and items == [1, 2] and items.value == [1, 2]
    assert type(pickle.loads(pickle.dumps(items))) is list and type(copy.copy(number)) is int
    assert isinstance(flag, Proxy) and flag.value is True  # bool cannot be subclassed: stays a proxy


def test_unsaved_proxies_stay_proxies(tiny, x):
    with tiny.trace(x):
        hidden = tiny.layer1.output
    assert isinstance(hidden, Proxy)
    with pytest.raises(ValueError, match="before it's been set"):
        hidden.value


def test_invokes_and_ifs_inside_them(tiny, net, x):
    y = x * -1
    with tiny.trace() as tracer:
        with tracer.invoke(x):
            if tiny.layer1.output.sum() > -1e6:
                tiny.layer1.output[:] = 0
            first = tiny.output.save()
        with tracer.invoke(y):
            second = tiny.output.save()
    assert torch.allclose(first, eager(net, x, lambda h: h * 0)[0])
    assert torch.allclose(second, net(y))


def test_edit_with_an_if(tiny, net, x):
    with tiny.edit() as edited:
        if edited.layer1.output.sum() > -1e6:
            edited.layer1.output[:] = 0
    with edited.trace(x):
        out = edited.output.save()
    assert torch.equal(out, eager(net, x, lambda h: h * 0)[0])


def test_module_level_blocks_write_globals(tmp_path, tiny, net, x):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        with model.trace(x):
            if model.layer1.output.sum() > -1e6:
                model.layer1.output[:] = 0
            out = model.output.save()
        kind = type(out)
    """))
    namespace = runpy.run_path(str(script), {"model": tiny, "x": x})
    assert namespace["kind"] is torch.Tensor
    assert torch.equal(namespace["out"], eager(net, x, lambda h: h * 0)[0])


def test_without_source_the_block_runs_as_written(tiny, net, x):
    namespace = {"model": tiny, "x": x}
    exec("with model.trace(x):\n    out = model.output.save()\n", namespace)
    assert torch.equal(namespace["out"].value, net(x))
    with pytest.raises(TraceError, match="no truth value"):
        exec("with model.trace(x):\n    if model.output.sum() > 0:\n        pass\n", namespace)


def test_errors_while_running_point_at_the_users_line(tiny, x):
    with pytest.raises(IndexError) as error:
        with tiny.trace(x):
            if tiny.layer1.output.sum() > -1e6:
                tiny.layer1.output[:, 99] = 0  # bad index
    assert f"{__file__}:{line_of('bad index')}" in str(error.value)
    assert not compile._opened()


def test_a_compiled_block_is_cached(tiny, x):
    def run():
        with tiny.trace(x):
            if tiny.layer1.output.sum() > 0:
                pass
    run()
    cached = compile._blocks[run.__code__]
    run()
    assert compile._blocks[run.__code__] is cached and len(cached) == 1


def test_the_readme_experiment_in_both_dialects(tiny, net, x, capsys):
    model = tiny
    with model.trace(x) as tracer:
        hidden = model.layer1.output
        with tracer.cond(hidden.norm() > 1):
            model.layer1.output[:] = 0
        tracer.log("norm:", hidden.norm())
        old = [layer.output.save() for layer in (model.layer1, model.layer2)]
    with model.trace(x):
        hidden = model.layer1.output
        if hidden.norm() > 1:
            model.layer1.output[:] = 0
        print("norm:", hidden.norm())
        outs = nnglass.save([])
        for layer in (model.layer1, model.layer2):
            outs.append(layer.output)
    expected, seen = eager(net, x, (lambda h: h * 0) if net.layer1(x).norm() > 1 else None)
    assert torch.equal(outs[1], expected) and torch.equal(old[1].value, outs[1].value)
    logs = capsys.readouterr().out.splitlines()
    assert logs[0] == logs[1] == f"norm: {seen.norm()!s}"


# -- what cannot be compiled raises at the user's line ---------------------------------------------------------
def test_while_on_a_proxy(tiny, x):
    with pytest.raises(TraceError, match=rf"{line_of('while proxy')}: `while` on a proxy cannot be compiled"):
        with tiny.trace(x):
            while tiny.layer1.output.sum() > 0:  # while proxy
                pass
    assert not compile._opened()


def test_break_under_nested_proxy_conditions(tiny, x):
    with pytest.raises(TraceError, match=rf"{line_of('nested break')}: `break` under nested `if`s on proxies"):
        with tiny.trace(x):
            for _ in range(3):
                if tiny.layer1.output.sum() > 0:
                    if tiny.layer1.output.max() > 0:
                        break  # nested break


def test_loop_over_a_proxy_without_a_length(tiny, x):
    with pytest.raises(TraceError, match=rf"{line_of('no length')}: a loop over a proxy inside a trace"):
        with tiny.trace(x):
            for item in nnglass.list([1, 2]):  # no length
                pass


def test_conditional_expression_on_a_proxy(tiny, x):
    with pytest.raises(TraceError, match=rf"{line_of('ternary')}: `a if <proxy> else b`"):
        with tiny.trace(x):
            y = 1 if tiny.output.sum() > 0 else 2  # ternary


def test_return_inside_a_block_runs_it_as_written_and_says_why(tiny, x):
    def experiment():
        with tiny.trace(x):
            if tiny.output.sum() > 0:
                return 1  # return inside
    with pytest.raises(TraceError, match="no truth value") as error:
        experiment()
    assert error.value.__notes__ == [f"nnglass ran this with-block as written, without compiling it: "
                                     f"{__file__}:{line_of('return inside')}: it has a `return`: "
                                     f"assign the result and return after the block"]
    assert not compile._opened()


def test_break_out_of_a_block_runs_it_as_written(tiny, net, x):
    outs = []
    for i in range(5):
        with tiny.trace(x):
            if i == 2:
                break  # break out
            outs.append(tiny.output.save())
    assert len(outs) == 2 and all(torch.equal(out.value, net(x)) for out in outs)
    with pytest.raises(TraceError, match="no truth value") as error:
        for _ in range(2):
            with tiny.trace(x):
                if tiny.output.sum() > 0:
                    break  # outer break
    assert f"{line_of('outer break')}: it has a `break` out of the block" in error.value.__notes__[0]


def test_print_with_keywords_of_a_proxy(tiny, x):
    with pytest.raises(TraceError, match="print\\(..., sep="):
        with tiny.trace(x):
            print(tiny.output, sep=", ")


@pytest.mark.parametrize("threshold", [-1e6, 1e6])
def test_a_variable_set_in_both_branches_of_a_proxy_if_holds_the_taken_branchs_value(tiny, net, x, threshold):
    with tiny.trace(x):
        hidden = tiny.layer1.output
        if hidden.sum() > threshold:
            scaled = hidden * 2
            label = "doubled"
        else:
            scaled = hidden * 3
            label = "tripled"
        scaled, label = nnglass.save(scaled), nnglass.save(label)
    taken = net.layer1(x).sum() > threshold
    assert torch.equal(scaled, net.layer1(x) * (2 if taken else 3))
    assert label == ("doubled" if taken else "tripled")


@pytest.mark.parametrize("threshold", [-1e6, 1e6])
def test_a_variable_set_in_one_branch_keeps_its_earlier_value_where_that_branch_did_not_run(tiny, net, x, threshold):
    with tiny.trace(x):
        out = tiny.output
        if tiny.layer1.output.sum() > threshold:
            out = out * 10
        out = out.save()
        total = 0
        if tiny.layer1.output.sum() <= threshold:
            pass
        else:
            total = total + tiny.output.sum()
        total = nnglass.save(total)
    taken = net.layer1(x).sum() > threshold
    assert torch.equal(out, net(x) * 10 if taken else net(x))
    assert torch.equal(torch.as_tensor(total), net(x).sum() if taken else torch.tensor(0))


@pytest.mark.parametrize("threshold", [-1e6, 1e6])
def test_plain_values_saved_inside_both_branches_of_a_proxy_if(tiny, net, x, threshold):
    with tiny.trace(x):
        if tiny.layer1.output.sum() > threshold:
            label = nnglass.save("high")
        else:
            label = nnglass.save(2)
    assert label == ("high" if net.layer1(x).sum() > threshold else 2)


def test_a_merged_variable_in_a_session_and_remote(tiny, net, x):
    def run(remote):
        with tiny.session(remote=remote):
            with tiny.trace(x):
                if tiny.layer1.output.sum() > 1e6:
                    hidden = tiny.layer1.output * 0
                else:
                    hidden = tiny.layer1.output + 1
                hidden = hidden.save()
        return hidden
    assert torch.equal(run(False), net.layer1(x) + 1)
    assert torch.equal(run("local"), net.layer1(x) + 1)


def test_a_variable_set_in_both_branches_of_a_plain_if(tiny, net, x):
    with tiny.trace(x):
        if x.sum() > 0:
            out = tiny.output.save()
        else:
            out = (tiny.output * 2).save()
    assert torch.equal(out, net(x) if x.sum() > 0 else net(x) * 2)


def test_under_another_trace_function_the_block_runs_as_written(tiny, x):
    sys.settrace(lambda *args: None)
    try:
        with pytest.raises(TraceError, match="no truth value") as error:
            with tiny.trace(x):
                if tiny.output.sum() > 0:
                    pass
    finally:
        sys.settrace(None)
    assert "another trace function (a debugger, coverage) is active" in error.value.__notes__[0]


def test_a_one_line_block_runs_as_written_and_gives_real_values(tiny, net, x):
    with tiny.trace(x): out = tiny.output.save()  # noqa: E701
    assert type(out) is torch.Tensor and torch.equal(out, net(x))


def test_a_saved_value_of_a_branch_that_did_not_run_leaves_the_variable_as_it_was(tiny, net, x):
    found, missing = None, None
    with tiny.trace(x):
        if tiny.output.sum() > -1e6:
            found = tiny.output.save()
        if tiny.output.sum() > 1e6:
            missing = (tiny.output * 2).save()
    assert torch.equal(found, net(x)) and missing is None


def test_a_compiled_body_that_starts_with_try(tiny, net, x):
    def run():
        with tiny.trace(x):
            try:  # Python 3.11 gives this line a NOP outside the with's handler: the skip waits past it
                hidden = tiny.layer1.output.save()
            except Exception:
                pass
            if tiny.layer1.output.sum() > -1e9:
                tiny.layer2.output[:] = 0
            out = tiny.output.save()
        return hidden, out

    hidden, out = run()
    assert torch.equal(hidden, net.layer1(x)) and torch.equal(out, torch.zeros(1, 2))
    with tiny.trace(x):  # nothing was left open
        again = tiny.output.save()
    assert torch.equal(again, net(x))
