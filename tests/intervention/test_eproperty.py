"""nnsight's extension API: Envoy subclasses chosen by `envoys=`, eproperty views with pre/postprocess and
transform; every value against the plain net with the same edit by hand."""
import collections

import pytest
import torch

from nnglass import NNsight, TraceError
from nnglass.intervention.envoy import Envoy
from nnglass.intervention.hooks import requires_input, requires_output
from nnglass.intervention.interleaver import eproperty


class Doubled(Envoy):
    @eproperty(key="output")
    @requires_output
    def doubled(self): ...

    @doubled.preprocess
    def doubled(self, value):
        return value * 2

    @doubled.postprocess
    def doubled(self, value):  # an assignment gives the doubled view: the model gets half of it
        return value / 2


class Halves(Envoy):
    """The output's two halves as a new dimension; edits of the view go back into the model."""

    @eproperty(key="output")
    @requires_output
    def halves(self): ...

    @halves.preprocess
    def halves(self, value):
        return value.unflatten(-1, (2, -1)).clone()

    @halves.transform
    @staticmethod
    def halves(value):
        return value.flatten(-2)


class FirstInput(Envoy):
    @eproperty(key="input")
    @requires_input
    def first(self): ...

    @first.preprocess
    def first(self, value):
        return value[0][0]


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(collections.OrderedDict(layer1=torch.nn.Linear(5, 10), layer2=torch.nn.Linear(10, 2)))


def test_envoys_by_module_type_give_a_view_and_take_an_assignment():
    net, x = make_net(), torch.rand(3, 5)
    model = NNsight(net, envoys={torch.nn.Linear: Doubled})
    assert type(model.layer1) is Doubled and type(model.layer2) is Doubled
    with model.trace(x):
        doubled = model.layer1.doubled.save()
        model.layer2.doubled = torch.ones(3, 2)
        out = model.output.save()
    torch.testing.assert_close(doubled, net.layer1(x) * 2)
    torch.testing.assert_close(out, torch.full((3, 2), 0.5))


def test_a_transform_puts_the_edited_view_back_into_the_model():
    net, x = make_net(), torch.rand(3, 5)
    model = NNsight(net, envoys={"layer1": Halves})
    assert type(model.layer1) is Halves and type(model.layer2) is Envoy  # by path suffix; others the base
    with model.trace() as tracer:
        with tracer.invoke(x):
            model.layer1.halves[:, 1] = 0  # the second half of layer1's output, zeroed through the view
            edited = model.output.save()
        with tracer.invoke(x):
            plain = model.output.save()
    mask = torch.tensor([1.0] * 5 + [0.0] * 5)
    torch.testing.assert_close(edited, net.layer2(net.layer1(x) * mask))
    torch.testing.assert_close(plain, net(x))  # the other invoke is untouched


def test_an_input_view_and_a_subclass_default():
    class Model(NNsight):
        envoys = FirstInput

    net, x = make_net(), torch.rand(2, 5)
    model = Model(net)
    with model.trace(x):
        first = model.layer2.first.save()
    torch.testing.assert_close(first, net.layer1(x))
    assert type(Model(net, envoys=None).layer2) is Envoy


def test_an_eproperty_that_names_no_module_value_is_a_clear_error():
    class Unhooked(Envoy):
        @eproperty()
        def logits(self): ...

    model, x = NNsight(make_net(), envoys=Unhooked), torch.rand(1, 5)
    with pytest.raises(TraceError, match="requires_output or requires_input"):
        with model.trace(x):
            model.layer1.logits.save()
    with model.trace(x):  # the next trace works
        out = model.output.save()
    assert out.shape == (1, 2)


def test_path_keys_may_start_with_a_dot():
    assert type(NNsight(make_net(), envoys={".layer1": Doubled}).layer1) is Doubled


class Block(torch.nn.Module):
    """A module with a child named `output`, as BERT's layers have."""

    def __init__(self):
        super().__init__()
        self.output = torch.nn.Linear(5, 5)

    def forward(self, x):
        return self.output(x) * 2


def test_a_child_named_like_an_envoy_attribute_keeps_its_name_and_the_attribute_moves():
    torch.manual_seed(0)
    net, x = torch.nn.Sequential(Block()), torch.rand(2, 5)
    with pytest.warns(UserWarning, match="nns_output"):
        model = NNsight(net)
    assert model[0].output._module is net[0].output
    with model.trace(x):
        inner = model[0].output.output.save()  # the child's output
        outer = model[0].nns_output.save()     # the block's own output
    torch.testing.assert_close(inner, net[0].output(x))
    torch.testing.assert_close(outer, net(x))
