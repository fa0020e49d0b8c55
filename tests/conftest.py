"""Shared fixtures: the walkthrough's tiny two-layer network (5 -> 10 -> 2)."""
from collections import OrderedDict

import pytest
import torch

from nnglass import NNsight

INPUT_SIZE, HIDDEN_DIMS, OUTPUT_SIZE = 5, 10, 2


def make_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(INPUT_SIZE, HIDDEN_DIMS)),
        ("layer2", torch.nn.Linear(HIDDEN_DIMS, OUTPUT_SIZE)),
    ])).requires_grad_(False)


@pytest.fixture
def net() -> torch.nn.Sequential:
    return make_net()


@pytest.fixture
def tiny(net: torch.nn.Sequential) -> NNsight:
    return NNsight(net)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand((1, INPUT_SIZE))
