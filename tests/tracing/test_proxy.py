"""Every operator, torch function, method and einops call on a proxy equals the eager result."""
import collections
import operator

import einops
import pytest
import torch

import nnglass
from nnglass import NNsight, TraceError

BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
          operator.mod, operator.pow, operator.lt, operator.le, operator.eq, operator.ne,
          operator.gt, operator.ge]


@pytest.mark.parametrize("op", BINARY, ids=lambda f: f.__name__)
def test_binary_operators_both_sides(tiny, net, x, op):
    with tiny.trace(x):
        left = op(tiny.layer1.output, 0.5).save()
        right = op(0.5, tiny.layer1.output).save()
    hidden = net.layer1(x)
    assert torch.allclose(left.value.float(), op(hidden, 0.5).float(), equal_nan=True)
    assert torch.allclose(right.value.float(), op(0.5, hidden).float(), equal_nan=True)


@pytest.mark.parametrize("op", [operator.and_, operator.or_, operator.xor], ids=lambda f: f.__name__)
def test_bitwise_operators(tiny, net, x, op):
    with tiny.trace(x):
        result = op(tiny.layer1.output > 0, tiny.layer1.output < 0.3).save()
    hidden = net.layer1(x)
    assert torch.equal(result.value, op(hidden > 0, hidden < 0.3))


def test_unary_matmul_and_inplace_operators(tiny, net, x):
    with tiny.trace(x):
        h = tiny.layer1.output
        results = [(-h).save(), abs(h).save(), (~(h > 0)).save(), (h @ h.T).save()]
        positive = (+h).save()  # the same tensor, as in eager torch: sees the edit below
        h += 1
        after = tiny.layer1.output.save()
    hidden = net.layer1(x)
    expected = [-hidden, abs(hidden), ~(hidden > 0), hidden @ hidden.T]
    assert all(torch.equal(r.value, e) for r, e in zip(results, expected))
    assert torch.equal(after.value, hidden + 1) and torch.equal(positive.value, hidden + 1)


def test_torch_functions_methods_and_attributes(tiny, net, x):
    with tiny.trace(x):
        h = tiny.layer1.output
        stacked = torch.cat([h, h * 2], dim=0).save()
        soft = torch.nn.functional.softmax(h, dim=-1).save()
        top = h.topk(3).indices.save()
        transposed = h.T.save()
        dtype_name = h.dtype
    hidden = net.layer1(x)
    assert torch.equal(stacked.value, torch.cat([hidden, hidden * 2]))
    assert torch.equal(soft.value, torch.softmax(hidden, -1))
    assert torch.equal(top.value, hidden.topk(3).indices)
    assert torch.equal(transposed.value, hidden.T)
    assert dtype_name == torch.float32


def test_einops_on_proxies(tiny, net, x):
    with tiny.trace(x):
        split = einops.rearrange(tiny.layer1.output, "b (h d) -> b h d", h=2).save()
        pooled = einops.reduce(tiny.layer1.output, "b d -> b", "max").save()
    hidden = net.layer1(x)
    assert torch.equal(split.value, einops.rearrange(hidden, "b (h d) -> b h d", h=2))
    assert torch.equal(pooled.value, hidden.max(-1).values)


def test_factory_functions_become_nodes(tiny, x):
    with tiny.trace(x) as tracer:
        noise = torch.zeros(tiny.layer1.output.shape) + torch.ones(3).sum()
        noise.save()
    assert [n.target.__name__ for n in tracer.graph.nodes if n.op == "call_function"][:2] == ["zeros", "ones"]
    assert torch.equal(noise.value, torch.full((1, 10), 3.0))
    assert isinstance(torch.zeros(2), torch.Tensor)  # patching ends with the trace


def test_saved_proxy_acts_like_its_value(tiny, net, x):
    with tiny.trace(x):
        h = tiny.layer1.output.save()
    hidden = net.layer1(x)
    assert str(h) == str(hidden) and repr(h) == repr(hidden)
    assert torch.equal(h[0], hidden[0]) and torch.equal(h + 1, hidden + 1)
    assert torch.equal(torch.relu(h), torch.relu(hidden)) and torch.equal(h.argmax(), hidden.argmax())
    assert len(h) == 1 and [r.shape for r in h] == [torch.Size([10])]
    assert f"{h[0, 0]:.3f}" == f"{hidden[0, 0].item():.3f}" and float(h[0, 0]) == hidden[0, 0].item()


def test_python_truth_of_a_proxy_raises_at_once(tiny, x):
    with pytest.raises(TraceError, match=r"tracer\.cond"):
        with tiny.trace(x):
            bool(tiny.layer1.output)


@pytest.mark.parametrize("misuse", [lambda p: [v for v in p], lambda p: len(p)])
def test_iterating_a_session_value_raises_at_once(tiny, misuse):
    with pytest.raises(TraceError, match=r"session\.iter"):
        with tiny.session():
            misuse(nnglass.list())


class Pair(torch.nn.Module):
    def forward(self, x):
        return x * 2, x + 1


class Sum(torch.nn.Module):
    def forward(self, pair):
        return pair[0] + pair[1]


def test_unpacking_and_len_of_trace_values_follow_their_fake_values():
    torch.manual_seed(0)
    net = torch.nn.Sequential(collections.OrderedDict(pair=Pair(), sum=Sum(), out=torch.nn.Linear(5, 2)))
    model, x = NNsight(net), torch.rand(3, 5)
    with model.trace(x):
        doubled, shifted = model.pair.output.save()  # the pieces of a saved value are saved
        rows = [row.save() for row in model.out.output]
        count = len(model.out.output)
    expected = net(x)
    assert torch.equal(doubled, x * 2) and torch.equal(shifted, x + 1) and count == 3
    assert all(torch.equal(row, expected[i]) for i, row in enumerate(rows))



def test_module_io_outside_a_trace_is_an_error(tiny):
    with pytest.raises(TraceError, match="inside `with model.trace"):
        tiny.layer1.output


def test_calling_a_module_inside_a_trace(tiny, net, x):
    with tiny.trace(x):
        again = tiny.layer2(tiny.layer1.output * 2).save()
        out = tiny.output.save()
    assert torch.equal(again.value, net.layer2(net.layer1(x) * 2))
    assert torch.equal(out.value, net(x))  # the graph's own module call did not disturb the hooks
