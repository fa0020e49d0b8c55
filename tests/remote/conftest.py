"""A server hosting the tiny net for each remote test module; the client's `tiny` has the name it is hosted as."""
import pytest

from nnglass import NNsight
from tests.server.serving import hosting, tiny_model


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.fixture
def tiny(net, hosted) -> NNsight:
    model = NNsight(net)
    model._remote_name = "tiny"
    return model
