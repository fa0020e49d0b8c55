"""One server per attack module, and after every attack a check that it still serves a normal trace."""
import pytest
import torch

from tests.server.serving import hosting, tiny_model


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.fixture(autouse=True)
def still_serving(hosted, net, x):
    """After each attack, a normal remote trace still gives the local result."""
    yield
    model = tiny_model()
    with model.trace(x, remote=True):
        out = model.output.save()
    assert torch.equal(out.value, net(x))
