"""The SmolLM2 interventions, written once for any library, and their plain transformers equivalents.

Every intervention is a function of the library module `lib` and its model, so that the very same code runs on
nnglass and on the peer library (nnsight, `run.py --peer PYTHON`, see peer.py).
"""
from __future__ import annotations

from typing import Any

import torch


# -- the interventions: the same code for every library -----------------------------------------------------
def empty_trace(lib: Any, model: Any, prompt: str) -> None:
    with model.trace(prompt):
        pass


def save_layer(lib: Any, model: Any, prompt: str, layer: int) -> Any:
    with model.trace(prompt):
        hidden = model.model.layers[layer].output.save()
    return hidden


def save_layers(lib: Any, model: Any, prompt: str, layers: int) -> list:
    hidden = []  # made outside the trace: nnsight 0.8 hands back only saved values assigned inside its body
    with model.trace(prompt):
        for i in range(layers):
            hidden.append(model.model.layers[i].output.save())
    return hidden


def stop_after(lib: Any, model: Any, prompt: str, layer: int) -> Any:
    with model.trace(prompt) as tracer:
        hidden = model.model.layers[layer].output.save()
        tracer.stop()
    return hidden


def invokes(lib: Any, model: Any, prompts: tuple[str, ...], layer: int) -> list:
    saved = []
    with model.trace() as tracer:
        for prompt in prompts:
            with tracer.invoke(prompt):
                saved.append(model.model.layers[layer].output.save())
    return saved


def separate_traces(lib: Any, model: Any, prompts: tuple[str, ...], layer: int) -> list:
    return [save_layer(lib, model, prompt, layer) for prompt in prompts]


def generate_saving_logits(lib: Any, model: Any, prompt: str, steps: int, pad: int) -> list:
    """Greedy generation that saves lm_head's output at every step."""
    if hasattr(model.lm_head, "next"):  # nnglass (and nnsight before 0.5): address the module's next call
        with model.generate(prompt, max_new_tokens=steps, do_sample=False, pad_token_id=pad):
            logits = [model.lm_head.output.save()] + [model.lm_head.next().output.save() for _ in range(steps - 1)]
    else:  # nnsight 0.5 and later dropped Envoy.next(): a loop over the tracer's iterations
        with model.generate(prompt, max_new_tokens=steps, do_sample=False, pad_token_id=pad) as tracer:
            logits = list().save()
            for step in tracer.iter[:steps]:
                logits.append(model.lm_head.output)
    return logits


# -- the plain transformers equivalents (tokenizer included) -------------------------------------------------
class _Stop(Exception):
    """Raised by a forward hook to end a plain forward pass early."""


def plain_forward(hf: Any, tok: Any, prompt: str | tuple[str, ...]) -> Any:
    if isinstance(prompt, tuple):
        return hf(**tok(list(prompt), return_tensors="pt", padding=True))
    return hf(**tok(prompt, return_tensors="pt"))


def plain_stop_after(hf: Any, tok: Any, prompt: str, layer: int) -> Any:
    """A forward pass ended by a hook that raises once `layer` has run: early stopping without a library."""
    seen = []

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.append(output)
        raise _Stop

    handle = hf.model.layers[layer].register_forward_hook(hook)
    try:
        hf(**tok(prompt, return_tensors="pt"))
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def plain_generate(hf: Any, tok: Any, prompt: str, steps: int, pad: int) -> Any:
    return hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=steps, do_sample=False, pad_token_id=pad)


def layer_outputs(hf: Any, tok: Any, prompt: str) -> list[torch.Tensor]:
    """Every decoder layer's output for prompt, captured with plain hooks (the reference for checks)."""
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
               for i, layer in enumerate(hf.model.layers)]
    try:
        hf(**tok(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(seen))]
