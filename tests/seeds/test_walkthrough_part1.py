"""Walkthrough part 1 ("First, let's start small"), cell by cell, against the eager network."""
import torch

import nnglass as nnsight
from tests.conftest import HIDDEN_DIMS


def test_print_shows_module_tree(tiny, net):  # cells 4, 8
    assert str(tiny) == str(net)
    assert "(layer1): Linear(in_features=5, out_features=10, bias=True)" in str(tiny)


def test_empty_trace_runs(tiny, x):  # cell 5
    with tiny.trace(x) as tracer:
        pass
    with tiny.trace(x) as tracer:
        result = tracer.result.save()  # the model's output (nnsight 0.5+ names it `tracer.result`)
    assert torch.equal(result, tiny._model(x))


def test_unsaved_value_raises(tiny, x):  # cell 6
    with tiny.trace(x):
        output = tiny.output
        try:
            output.value
        except ValueError as error:
            message = str(error)
    assert message.startswith("Accessing value before it's been set.")
    assert "Nothing has run yet" in message


def test_saved_output(tiny, net, x):  # cell 7
    with tiny.trace(x):
        output = tiny.output.save()
    assert torch.equal(output.value, net(x))


def test_layer1_output_and_layer2_input(tiny, net, x):  # cells 9, 10
    with tiny.trace(x):
        l1_output = tiny.layer1.output.save()
        l2_input = tiny.layer2.input.save()
    assert torch.equal(l1_output.value, net.layer1(x))
    assert torch.equal(l2_input.value, net.layer1(x))


def test_inputs_are_args_and_kwargs(tiny, x):
    with tiny.trace(x):
        inputs = tiny.layer1.inputs.save()
    args, kwargs = inputs.value
    assert torch.equal(args[0], x) and kwargs == {}


def test_log_prints_at_execution(tiny, net, x, capsys):  # cell 11
    with tiny.trace(x) as tracer:
        tracer.log("Layer 1 - out: ", tiny.layer1.output)
    assert capsys.readouterr().out == f"Layer 1 - out:  {net.layer1(x)}\n"


def test_argmax_inside_trace(tiny, net, x):  # cell 12
    with tiny.trace(x):
        l1_amax = torch.argmax(tiny.layer1.output, dim=1).save()
    assert torch.equal(l1_amax[0], torch.argmax(net.layer1(x), dim=1)[0])


def test_methods_and_operators(tiny, net, x):  # cell 13
    with tiny.trace(x):
        value = (tiny.layer1.output.sum() + tiny.layer2.output.sum()).save()
    assert torch.equal(value.value, net.layer1(x).sum() + net(x).sum())


def tensor_sum(tensor):
    total = 0
    for element in tensor.flatten():
        total += element.item()
    return torch.tensor(total)


def test_apply_custom_function(tiny, net, x):  # cell 14
    with tiny.trace(x):
        custom_sum = nnsight.apply(tensor_sum, tiny.layer1.output).save()
        total = tiny.layer1.output.sum()
        total.save()
    assert torch.allclose(custom_sum.value, net.layer1(x).sum())
    assert torch.allclose(total.value, net.layer1(x).sum())


def test_setting_in_place(tiny, net, x):  # cell 15
    with tiny.trace(x):
        before = tiny.layer1.output.clone().save()
        tiny.layer1.output[:, 0] = 0
        after = tiny.layer1.output.save()
        out = tiny.output.save()
    hidden = net.layer1(x)
    assert torch.equal(before.value, hidden)
    hidden[:, 0] = 0
    assert torch.equal(after.value, hidden)
    assert torch.equal(out.value, net.layer2(hidden))


def test_bad_index_raises_with_user_line(tiny, x):  # cell 16
    try:
        with tiny.trace(x):
            tiny.layer1.output[:, HIDDEN_DIMS] = 0
    except IndexError as error:
        message = str(error)
    assert "index 10 is out of bounds for dimension 1 with size 10" in message
    assert "test_walkthrough_part1.py" in message and "tiny.layer1.output[:, HIDDEN_DIMS] = 0" in message


def test_validate_raises_at_the_user_line(tiny, x):  # cell 17
    ran = []
    try:
        with tiny.trace(x, scan=True, validate=True):
            tiny.layer1.output[:, HIDDEN_DIMS] = 0
            ran.append("after the bad line")
    except IndexError as error:
        message = str(error)
    assert ran == []  # raised at the line itself, before the model ran
    assert "index 10 is out of bounds" in message


def test_shape_inside_trace_and_last_index(tiny, net, x):  # cell 18
    with tiny.trace(x):
        shape = tiny.layer1.output.shape
        tiny.layer1.output[:, HIDDEN_DIMS - 1] = 0
        after = tiny.layer1.output.save()
    assert shape == torch.Size([1, 10])
    expected = net.layer1(x)
    expected[:, -1] = 0
    assert torch.equal(after.value, expected)


def test_replace_output_with_noise(tiny, net, x):  # cell 19
    with tiny.trace(x):
        before = tiny.layer1.output.clone().save()
        noise = (0.001**0.5) * torch.randn(before.shape)
        tiny.layer1.output = before + noise
        after = tiny.layer1.output.save()
        out = tiny.output.save()
    assert torch.equal(before.value, net.layer1(x))
    assert not torch.equal(after.value, before.value)
    assert torch.allclose(after.value, before.value, atol=0.2)
    assert torch.allclose(out.value, net.layer2(after.value))


def test_scan_gives_shape(tiny, x):  # cell 20
    with tiny.scan(x):
        dim = tiny.layer1.output.shape[-1]
    assert dim == 10


def test_gradients(tiny, net, x):  # cell 21
    with tiny.trace(x):
        tiny.layer1.output.requires_grad = True
        layer1_grad = tiny.layer1.output.grad.save()
        layer2_grad = tiny.layer2.output.grad.save()
        loss = tiny.output.sum()
        loss.backward()
    assert torch.equal(layer2_grad.value, torch.ones(1, 2))
    assert torch.allclose(layer1_grad.value, net.layer2.weight.sum(0, keepdim=True))


def test_editing_gradients(tiny, x):  # cell 22
    with tiny.trace(x):
        tiny.layer1.output.requires_grad = True
        tiny.layer1.output.grad[:] = 0
        tiny.layer2.output.grad = tiny.layer2.output.grad * 2
        layer1_grad = tiny.layer1.output.grad.save()
        layer2_grad = tiny.layer2.output.grad.save()
        loss = tiny.output.sum()
        loss.backward()
    assert torch.equal(layer1_grad.value, torch.zeros(1, 10))
    assert torch.equal(layer2_grad.value, torch.full((1, 2), 2.0))


def test_envoy_stop(tiny, net, x):  # cell 23
    with tiny.trace(x):
        l1_out = tiny.layer1.output.save()
        tiny.layer1.output.stop()
    assert torch.equal(l1_out.value, net.layer1(x))


def test_values_after_stop_are_unset(tiny, x):  # cell 24
    with tiny.trace(x):
        l2_out = tiny.layer2.output.save()
        tiny.layer1.output.stop()
    try:
        print("L2 - Output: ", l2_out)
    except ValueError as error:
        message = str(error)
    assert message == "Accessing value before it's been set."


def test_conditions(tiny, x, capsys):  # cell 25
    torch.manual_seed(3)
    with tiny.trace(x) as tracer:
        rand_int = torch.randint(low=-10, high=10, size=(1,))
        with tracer.cond(rand_int % 2 == 0):
            tracer.log("Random Integer ", rand_int, " is Even")
        with tracer.cond(rand_int % 2 == 1):
            tracer.log("Random Integer ", rand_int, " is Odd")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("is Even") == (int(lines[0].split("[")[1].split("]")[0]) % 2 == 0)


def test_nested_conditions(tiny, x, capsys):  # cell 26
    with tiny.trace(x) as tracer:
        non_rand_int = 8
        with tracer.cond(non_rand_int > 0):
            with tracer.cond(non_rand_int % 2 == 0):
                tracer.log("Rand Int ", non_rand_int, " is Positive and Even")
            with tracer.cond(non_rand_int % 2 == 1):
                tracer.log("never")
    assert capsys.readouterr().out == "Rand Int  8  is Positive and Even\n"
