"""The generic recorder and interpreter, with no model: record, run, free, skip, loop, nest, clean up."""
import gc
import operator
import weakref

import pytest

from nnglass.tracing.contexts import Condition, Loop
from nnglass.tracing.errors import TraceError
from nnglass.tracing.interpreter import Interpreter, Run, run_graph
from nnglass.tracing.local import current
from nnglass.tracing.tracer import Tracer


class Plain(Tracer):
    """A recorder whose graph runs with the plain interpreter at the end."""

    kind = "session"
    holds_traces = True

    def end(self) -> None:
        run = Run(self.experiment.graphs, self.experiment.results)
        run.run_trace = lambda graph, env: Interpreter(graph, run, env).run()
        run_graph(self.graph, run)

    def value(self, v):
        return self.proxy("call_function", operator.pos, (v,))


class Inner(Plain):
    kind = "trace"
    nests = True
    holds_traces = False

    def end(self) -> None:
        pass


def test_record_then_run_and_keep_only_saved():
    with Plain() as rec:
        a = rec.value(2)
        b = (a * 3).save()
        c = a + 1
    assert b.value == 6
    with pytest.raises(ValueError, match="before it's been set"):
        c.value
    assert list(rec.experiment.results.values()) == [6]  # only the saved value outlives the run


def test_nodes_as_arguments_directly_or_inside_containers_and_keywords():
    with Plain() as rec:
        a, b = rec.value(2), rec.value(5)
        direct = rec.proxy("call_function", operator.sub, (b, a)).save()
        nested = rec.proxy("call_function", lambda pair, scale: (pair[0] - pair[1]) * scale, ([b, a],),
                           {"scale": a}).save()
        mixed = rec.proxy("call_function", lambda x, y, z: x * 100 + y * 10 + z, (a, 7, b)).save()
        refs = [proxy.node.refs for proxy in (direct, nested, mixed)]
    assert refs == [(0, 1), None, (0, 2)]  # None: nodes inside containers, the args are walked
    assert (direct.value, nested.value, mixed.value) == (3, 6, 275)


def test_values_are_freed_after_their_last_use():
    class Box:
        pass

    with Plain() as rec:
        box = rec.proxy("call_function", Box, ())
        ref = rec.proxy("call_function", weakref.ref, (box,))
        alive = rec.proxy("call_function", lambda r: r() is not None, (ref,)).save()
        last_use = rec.proxy("call_function", lambda b: None, (box,))
        gone = rec.proxy("call_function", lambda r, _: r() is None, (ref, last_use)).save()
    assert alive.value and gone.value


def test_a_false_condition_skips_what_it_guards():
    with Plain() as rec:
        flag = rec.value(0)
        with Condition(rec, flag):
            skipped = rec.value(1).save()
        with Condition(rec, flag == 0):
            taken = rec.value(2).save()
    assert taken.value == 2
    with pytest.raises(ValueError):
        skipped.value


def test_a_loop_body_runs_per_item_with_outer_values():
    with Plain() as rec:
        offset = rec.value(10)
        total = rec.proxy("call_function", list, ()).save()
        with Loop(rec, [1, 2, 3]) as item:
            total.append(item + offset)
    assert total.value == [11, 12, 13]


def test_values_cross_into_and_out_of_nested_graphs():
    with Plain() as rec:
        outer = rec.value(5)
        with Inner() as inner:
            made = inner.value(outer) * 2
        after = (made + 1).save()
    assert after.value == 11 and inner.graph.parent is rec.graph
    assert made.node in inner.graph.exports and outer.node in inner.graph.free
    assert inner.graph.owner.graph is rec.graph


def test_nesting_what_cannot_nest_is_an_error_and_leaves_no_state():
    with pytest.raises(TraceError, match="cannot be opened inside"):
        with Inner():
            with Inner():
                pass
    assert current() is None and gc.isenabled()


def test_a_recorder_runs_once():
    rec = Plain()
    with rec:
        rec.value(1)
    with pytest.raises(TraceError, match="already been used"):
        with rec:
            pass
    assert current() is None and gc.isenabled()


def test_a_failed_begin_undoes_everything():
    class Broken(Plain):
        def begin(self):
            raise RuntimeError("no")

    import torch
    with pytest.raises(RuntimeError):
        with Broken():
            pass
    assert current() is None and gc.isenabled() and isinstance(torch.zeros(1), torch.Tensor)


def test_errors_name_the_users_line():
    with pytest.raises(ZeroDivisionError, match=r"test_tracer.py:\d+: .*boom = one / 0"):
        with Plain() as rec:
            one = rec.value(1)
            boom = one / 0  # noqa: F841
