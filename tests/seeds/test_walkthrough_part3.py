"""Walkthrough part 3 ("I thought you said huge models?") run locally on SmolLM2.

Adapted only where the model differs: SmolLM2 has 30 layers (`layers[-1]` for `layers[79]`),
its tokenizer adds no BOS (`encode(answer)[0]`), and layers return plain tensors in transformers 5.
The LoRA cell uses lr=0.5 instead of 3, which is too large for a 135M model.
"""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import nnglass as nnsight
from nnglass.envoy import Envoy
from nnglass.models import smollm2


@pytest.fixture(scope="module")
def llama():
    return smollm2()


def test_cell38_session_values_cross_traces(llama):
    with llama.session() as session:
        with llama.trace("The Eiffel Tower is in the city of") as t1:
            hs_79 = llama.model.layers[-1].output[:, -1, :]  # no .save()
            t1_tokens_out = llama.lm_head.output.argmax(dim=-1).save()
        with llama.trace("Buckingham Palace is in the city of") as t2:
            llama.model.layers[1].output[:, -1, :] = hs_79[:]
            t2_tokens_out = llama.lm_head.output.argmax(dim=-1).save()
    assert llama.tokenizer.decode(t1_tokens_out[0][-1]) == " Paris"
    # the same by hand: the hidden state of layer 29 put into layer 1's output
    with llama.trace("The Eiffel Tower is in the city of"):
        hidden = llama.model.layers[-1].output[:, -1, :].save()
    with llama.trace("Buckingham Palace is in the city of"):
        llama.model.layers[1].output[:, -1, :] = hidden
        expected = llama.lm_head.output.argmax(dim=-1).save()
    assert torch.equal(t2_tokens_out.value, expected.value)


def test_cell39_session_log_and_exit(llama, capsys):
    with llama.session() as session:
        session.log("-- Early Stop --")
        session.exit()
    assert capsys.readouterr().out == "-- Early Stop --\n"


def test_cell40_loop_of_traces(llama):
    with llama.session() as session:
        with session.iter([0, 1, 2]) as item:
            with llama.trace("_"):
                pass
            with llama.trace("_"):
                pass


def test_cell41_nested_loops(llama):
    with llama.session() as session:
        li = nnsight.list()
        [li.append([num]) for num in range(0, 3)]
        li2 = nnsight.list().save()
        with session.iter(li) as item:
            with session.iter(item) as item_2:
                li2.append(item_2)
    assert li2.value == [0, 1, 2]


def test_cell42_loop_exit(llama, capsys):
    with llama.session() as session:
        with session.iter([0, 1, 2, 3], return_context=True) as (item, iterator):
            iterator.log(item)
            with iterator.cond(item == 2):
                iterator.exit()
    assert capsys.readouterr().out == "0\n1\n2\n"


class LORA(nn.Module):
    def __init__(self, module: Envoy, dim: int, r: int) -> None:
        super(LORA, self).__init__()
        self.r = r
        self.module = module
        self.WA = torch.nn.Parameter(torch.randn(dim, self.r), requires_grad=True).save()
        self.WB = torch.nn.Parameter(torch.zeros(self.r, dim), requires_grad=True).save()

    def __call__(self, alpha: float = 1.0):
        A_x = torch.matmul(self.module.input[0][0], self.WA)
        BA_x = torch.matmul(A_x, self.WB)
        h = BA_x + self.module.output
        self.module.output = h * alpha

    def parameters(self):
        return [self.WA, self.WB]


def train(llama, lr: float, dim: int = 576, lora_dim: int = 4) -> tuple[list, LORA]:
    """Cells 43-48: train a LoRA on the last MLP to make "_" continue with " Paris"; the losses and the LoRA."""
    answer_token = llama.tokenizer.encode(" Paris")[0]
    module = llama.model.layers[-1].mlp
    torch.manual_seed(0)
    with llama.session() as session:
        dataset = [["_", answer_token]] * 100
        dataloader = DataLoader(dataset, batch_size=10)
        lora = LORA(module, dim, lora_dim)
        optimizer = torch.optim.AdamW(lora.parameters(), lr=lr)
        losses = nnsight.list().save()
        with session.iter(dataloader, return_context=True) as (batch, iterator):
            prompt = batch[0]
            correct_token = batch[1]
            with llama.trace(prompt) as tracer:
                lora()
                logits = llama.lm_head.output
                loss = torch.nn.functional.cross_entropy(logits[:, -1], batch[1])
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
    return losses.value, lora


def test_cells43_49_lora_training(llama):
    module = llama.model.layers[-1].mlp
    with llama.scan(" "):
        dim = module.output.shape[-1]
    assert dim == 576
    losses, lora = train(llama, lr=0.5, dim=dim)  # lr 3 as written overshoots on this SmolLM2: tests/compat/test_lora.py
    assert len(losses) == 10 and losses[-1] < losses[0] / 10
    with llama.generate("Hello", max_new_tokens=1) as generator:
        lora()
        with_lora = llama.generator.output.save()
    with llama.generate("Hello", max_new_tokens=1) as generator:
        without = llama.generator.output.save()
    assert llama.tokenizer.batch_decode(with_lora.value) == ["Hello Paris"]
    assert llama.tokenizer.batch_decode(without.value) != ["Hello Paris"]
