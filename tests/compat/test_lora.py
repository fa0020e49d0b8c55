"""The walkthrough's LoRA exactly as written (AdamW lr=3, 100 examples, batch 10, rank 4 on the last MLP),
step by step against an eager loop with a hand-written hook (same seed).

Finding: nnglass matches the eager loop to the last bit (every loss, the trained weights, the answer).
At lr=3 the plain PyTorch loop itself does not learn " Paris" on this SmolLM2 (dequantized from GGUF): Adam's
first steps move every entry by about lr, the loss jumps from 17.5 to about 114 at step 3 and is still
about 49 after the 10 steps, and "Hello" continues with "ologists". The same holds for seeds 0-5 and in
bfloat16; lr=0.5 (tests/seeds/test_walkthrough_part3.py) learns " Paris" in 4 steps. About 30 s.
"""
import pytest
import torch
from torch.utils.data import DataLoader

from nnglass.models import smollm2
from tests.seeds.test_walkthrough_part3 import train

LR, RANK, DIM = 3, 4, 576


@pytest.fixture(scope="module")
def llama():
    model = smollm2()
    model.dispatch()
    return model


def dataset(llama):
    return DataLoader([["_", llama.tokenizer.encode(" Paris")[0]]] * 100, batch_size=10)


def train_walkthrough(llama):
    """The walkthrough's cells 43-49 as written: the losses, the LoRA, the answer to "Hello"."""
    losses, lora = train(llama, lr=LR, dim=DIM, lora_dim=RANK)
    with llama.generate("Hello", max_new_tokens=1) as generator:
        lora()
        answer = llama.generator.output.save()
    return losses, (lora.WA.value, lora.WB.value), llama.tokenizer.batch_decode(answer.value)[0]


def train_eager(llama):
    """The same training with a forward hook on the plain transformers model."""
    hf, tokenizer = llama._model, llama.tokenizer
    torch.manual_seed(0)
    wa = torch.nn.Parameter(torch.randn(DIM, RANK))
    wb = torch.nn.Parameter(torch.zeros(RANK, DIM))
    optimizer = torch.optim.AdamW([wa, wb], lr=LR)
    handle = hf.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: (args[0][0][0] @ wa) @ wb + out)
    try:
        losses = []
        for prompts, target in dataset(llama):
            logits = hf(**tokenizer(list(prompts), return_tensors="pt")).logits
            loss = torch.nn.functional.cross_entropy(logits[:, -1], target)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            answer = hf.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    return losses, (wa.detach(), wb.detach()), tokenizer.decode(answer[0])


def test_walkthrough_lora_matches_the_eager_loop_step_by_step(llama):
    losses, weights, answer = train_walkthrough(llama)
    eager_losses, eager_weights, eager_answer = train_eager(llama)
    assert losses == eager_losses and len(losses) == 10
    assert all(torch.equal(a, b) for a, b in zip(weights, eager_weights))
    assert answer == eager_answer
