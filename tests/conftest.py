"""Shared fixtures: the walkthrough's tiny two-layer network (5 -> 10 -> 2)."""
from collections import OrderedDict

import pytest

from nnglass.server.numerics import use_strict_gemm

use_strict_gemm()  # before torch's first matrix product: batched server jobs equal jobs run alone, bit for bit

import torch  # noqa: E402

from nnglass import NNsight  # noqa: E402

INPUT_SIZE, HIDDEN_DIMS, OUTPUT_SIZE = 5, 10, 2

# One thread, as a forked server job computes: local and remote results then agree to the last bit
# (more threads sum in another order). On this 2-core machine it is also the faster setting.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (offline), for tiny random transformers models."""
    from transformers import AutoTokenizer

    from nnglass.models import smollm2_path
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="session")
def tok(smol_tokenizer):
    """The short name the language-model tests use for the SmolLM2 tokenizer."""
    return smol_tokenizer


def tiny_llama(tokenizer, layers: int):
    """A Llama with random weights, small enough for any test, sharing the tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_gpt2(tokenizer, layers: int):
    """A GPT-2 with random weights (it has no `model` child), sharing the tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return AutoModelForCausalLM.from_config(config).eval()
