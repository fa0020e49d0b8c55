"""remote="local": the experiment goes through the wire format (and its allow-list) but runs here."""
import pytest
import torch

import nnglass
from nnglass import NNsight


@pytest.fixture
def model(net) -> NNsight:
    return NNsight(net)  # no server name: it runs here anyway


def test_trace_through_the_wire_matches_the_plain_model(model, net, x):
    with model.trace(x, remote="local"):
        hidden = model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        out = model.output.save()
    expected_hidden = net.layer1(x)
    edited = expected_hidden.clone()
    edited[:, 0] = 0
    torch.testing.assert_close(hidden, expected_hidden)
    torch.testing.assert_close(out, net.layer2(edited))


def test_session_through_the_wire(model, net, x):
    with model.session(remote="local"):
        with model.trace(x):
            hidden = model.layer1.output
        with model.trace(x):
            model.layer1.output = hidden * 2
            out = model.output.save()
    torch.testing.assert_close(out, net.layer2(net.layer1(x) * 2))


def test_a_function_outside_the_allow_list_is_refused_as_remotely(model, x):
    def user_function(value):
        return value * 2

    with pytest.raises(ValueError, match="'.*user_function' is not allowed in a remote graph"):
        with model.trace(x, remote="local"):
            nnglass.apply(user_function, model.layer1.output).save()


def test_skip_goes_through_the_wire(model, net, x):
    with model.trace(x, remote="local"):
        model.layer1.skip(torch.ones(1, 10))
        out = model.output.save()
    torch.testing.assert_close(out, net.layer2(torch.ones(1, 10)))
