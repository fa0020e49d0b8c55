"""Analysis helpers on a StandardizedTransformer: logit lens, steering, activation and attribution patching,
attention patterns and patchscopes.

Each helper runs its own traces with graph operations only (torch ops on proxies and module calls), so the
same code can run on a server with `remote=True`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .modeling import tokens as _tokens
from .modeling.standard import StandardizedTransformer

__all__ = ["LogitLens", "Patching", "AttentionPattern", "Patchscope", "logit_lens", "steer", "patch_activations",
           "attribution_patching", "attention_pattern", "patchscope"]

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, tokens, vocab] -> one score per row [batch]


# -- logit lens -----------------------------------------------------------------------------------------------
@dataclass
class LogitLens:
    """What each layer's output predicts at each position, decoded with `ln_final` and `lm_head`."""

    top_ids: torch.Tensor               # [layers, positions, k] token ids, most probable first
    top_probs: torch.Tensor             # [layers, positions, k] their probabilities
    top_tokens: list[list[list[str]]]   # [layers][positions][k] the same tokens as text
    input_tokens: list[str]             # [positions] the prompt's tokens as text

    @property
    def tokens(self) -> list[list[str]]:
        """The top token of each layer (rows) at each position (columns)."""
        return [[top[0] for top in row] for row in self.top_tokens]

    @property
    def probs(self) -> torch.Tensor:
        """The top token's probability [layers, positions]."""
        return self.top_probs[..., 0]

    def plot(self, path: str | os.PathLike) -> str:
        """Write a PNG heatmap (layer by position, colour = top probability, top token in each cell)."""
        return _heatmap(self.probs, self.input_tokens, list(range(len(self.tokens))), path,
                        title="Logit lens: top token per layer and position", label="probability of the top token",
                        cells=self.tokens, cmap="Blues", vmin=0.0, vmax=1.0)


@torch.no_grad()
def logit_lens(model: StandardizedTransformer, prompt: str, top_k: int = 1, remote: bool = False) -> LogitLens:
    """Decode every layer's output with `ln_final` and `lm_head`, in one trace: top tokens and probabilities."""
    with model.trace(prompt, remote=remote):
        hidden = torch.stack([model.layers_output[i][0] for i in range(model.num_layers)])  # [layers, tokens, hidden]
        probs = model.lm_head(model.ln_final(hidden)).softmax(-1)  # [layers, tokens, vocab]
        top = probs.topk(top_k, dim=-1)
        top_probs, top_ids = top[0].save(), top[1].save()  # [layers, tokens, k] each
    layers, positions, k = top_ids.shape
    words = iter(model.tokenizer.batch_decode(top_ids.value.reshape(-1, 1)))  # in [layers, positions, k] order
    nested = [[[next(words) for _ in range(k)] for _ in range(positions)] for _ in range(layers)]
    return LogitLens(top_ids.value, top_probs.value, nested, _words(model, _ids(model, prompt)))


# -- steering ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def steer(model: StandardizedTransformer, prompt: str | list[str], vector: torch.Tensor, layers: int | Sequence[int],
          positions: Sequence[int] | None = None, scale: float = 1.0, remote: bool = False) -> torch.Tensor:
    """Logits [batch, tokens, vocab] of a run that adds `scale * vector` [hidden] to the given layers' outputs."""
    with model.trace(prompt, remote=remote):
        model.steer(layers, vector, factor=scale, positions=positions)
        logits = model.logits.save()
    return logits.value


# -- activation patching -----------------------------------------------------------------------------------------
@dataclass
class Patching:
    """The effect of patching each layer's clean output into the corrupted run, one position at a time."""

    effect: torch.Tensor       # [layers, positions]: 1 = as the clean run, 0 = as the corrupted run
    layers: list[int]          # the layer of each row
    positions: list[int]       # the position of each column
    input_tokens: list[str]    # the clean prompt's token at each column
    method: str = "Activation patching"  # or "Attribution patching" (a first-order estimate of the same effect)

    def plot(self, path: str | os.PathLike) -> str:
        """Write a PNG heatmap of the effect (layer by position, the value written in each cell)."""
        reach = max(1.0, float(self.effect.abs().max()))
        cells = [[f"{value:.2f}".replace("-0.00", "0.00") for value in row] for row in self.effect.tolist()]
        return _heatmap(self.effect, self.input_tokens, self.layers, path, title=self.method,
                        label="effect (1 = clean, 0 = corrupted)", cells=cells, cmap="RdBu_r",
                        vmin=-reach, vmax=reach)


@torch.no_grad()
def patch_activations(model: StandardizedTransformer, clean: str, corrupted: str,
                      layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                      metric: Metric | None = None, remote: bool = False) -> Patching:
    """Patch each (layer, position) of the clean run's layer outputs into the corrupted run; measure the effect.

    The default metric is the logit of the clean run's answer (its top token at the last position); every
    metric is normalised as (patched - corrupted) / (clean - corrupted). One trace per layer, positions batched.
    """
    clean_ids = _same_length(model, clean, corrupted, "patch_activations")
    layers = list(range(model.num_layers)) if layers is None else list(layers)
    positions = list(range(len(clean_ids))) if positions is None else [p % len(clean_ids) for p in positions]
    hidden, clean_logits, corrupted_logits = _baselines(model, clean, corrupted, layers, remote)
    if metric is None:
        metric = _answer_logit(int(clean_logits[0, -1].argmax()))
    low, high = metric(corrupted_logits), metric(clean_logits)  # [1] each
    if torch.equal(low, high):
        raise ValueError("The metric is the same on the clean and the corrupted run, so no effect can be measured.")
    rows = torch.arange(len(positions))
    columns = torch.tensor(positions)
    effect = torch.stack([
        (metric(_patched(model, corrupted, layer, rows, columns, hidden[i, columns], remote)) - low) / (high - low)
        for i, layer in enumerate(layers)])  # [layers, positions]
    return Patching(effect, layers, positions, [_words(model, clean_ids)[p] for p in positions])


def _same_length(model: StandardizedTransformer, clean: str, corrupted: str, helper: str) -> list[int]:
    """The clean prompt's token ids, after checking that the corrupted prompt has as many tokens."""
    clean_ids, corrupted_ids = _ids(model, clean), _ids(model, corrupted)
    if len(clean_ids) != len(corrupted_ids):
        raise ValueError(f"{helper} needs prompts of the same token length: the clean one has "
                         f"{len(clean_ids)} tokens, the corrupted one {len(corrupted_ids)}.")
    return clean_ids


def _baselines(model: StandardizedTransformer, clean: str, corrupted: str,
               layers: list[int], remote: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clean layer outputs [layers, tokens, hidden] and both runs' logits [1, tokens, vocab], in one trace."""
    with model.trace(remote=remote) as tracer:
        with tracer.invoke(clean):
            hidden = torch.stack([model.layers_output[layer][0] for layer in layers]).save()
            clean_logits = model.logits.save()
        with tracer.invoke(corrupted):
            corrupted_logits = model.logits.save()
    return hidden.value, clean_logits.value, corrupted_logits.value


def _patched(model: StandardizedTransformer, corrupted: str, layer: int, rows: torch.Tensor,
             columns: torch.Tensor, values: torch.Tensor, remote: bool) -> torch.Tensor:
    """Logits [positions, tokens, vocab] of the corrupted prompt run once per position, row r patched at columns[r]."""
    with model.trace([corrupted] * len(rows), remote=remote):
        model.layers_output[layer][rows, columns] = values  # values [positions, hidden]
        logits = model.logits.save()
    return logits.value


def _answer_logit(token: int) -> Metric:
    """The metric `logit of token at the last position`, per batch row."""
    return lambda logits: logits[:, -1, token]


# -- attribution patching ------------------------------------------------------------------------------------------
def attribution_patching(model: StandardizedTransformer, clean: str, corrupted: str,
                         layers: Sequence[int] | None = None, metric: Metric | None = None,
                         remote: bool = False) -> Patching:
    """Estimate `patch_activations` for every layer and position at once: grad x (clean - corrupted) activation.

    One trace, a clean and a corrupted invoke, one backward pass of the metric from the corrupted run:
    effect[l, p] = sum over hidden of (clean - corrupted)[l, p] * d metric / d corrupted[l, p], normalised as in
    `patch_activations` by (metric(clean) - metric(corrupted)). The metric runs inside the trace, on proxies.
    """
    clean_ids = _same_length(model, clean, corrupted, "attribution_patching")
    layers = list(range(model.num_layers)) if layers is None else list(layers)
    with model.trace(remote=remote) as tracer:
        with tracer.invoke(clean):
            clean_hidden = torch.stack([model.layers_output[layer][0] for layer in layers])  # [layers, tokens, hidden]
            clean_logits = model.logits
        with tracer.invoke(corrupted):
            hidden = [model.layers_output[layer] for layer in layers]  # each [1, tokens, hidden]
            measure = metric or _answer_logit(clean_logits[0, -1].argmax())
            score = measure(model.logits)  # [1]
            with score.sum().backward():
                grads = torch.stack([h.grad[0] for h in hidden])  # [layers, tokens, hidden]
            change = clean_hidden - torch.stack([h[0] for h in hidden])
            effect = ((change * grads).sum(-1) / (measure(clean_logits) - score)).detach().save()  # [layers, tokens]
    return Patching(effect.value, layers, list(range(len(clean_ids))), _words(model, clean_ids),
                    "Attribution patching")


# -- attention patterns ---------------------------------------------------------------------------------------------
@dataclass
class AttentionPattern:
    """Where one head looks: attention probabilities from each query position (rows) to each key (columns)."""

    pattern: torch.Tensor     # [queries, keys], rows sum to 1
    layer: int
    head: int
    input_tokens: list[str]   # [positions] the prompt's tokens as text

    def plot(self, path: str | os.PathLike) -> str:
        """Write a PNG heatmap (query by key position, colour = probability, the value in each cell)."""
        cells = [[f"{value:.2f}" for value in row] for row in self.pattern.tolist()]
        return _heatmap(self.pattern, self.input_tokens, self.input_tokens, path, cells=cells,
                        title=f"Attention pattern: layer {self.layer}, head {self.head}", label="probability",
                        xlabel="key (attended token)", ylabel="query (attending token)", origin="upper",
                        cmap="Greens", vmin=0.0, vmax=1.0)


@torch.no_grad()
def attention_pattern(model: StandardizedTransformer, prompt: str, layer: int, head: int,
                      remote: bool = False) -> AttentionPattern:
    """The attention probabilities of one head on a prompt (the model needs `enable_attention_probs=True`)."""
    with model.trace(prompt, remote=remote):
        pattern = model.attention_probabilities[layer][0, head].save()  # [queries, keys]
    return AttentionPattern(pattern.value, layer, head, _words(model, _ids(model, prompt)))


# -- patchscope ------------------------------------------------------------------------------------------------------
@dataclass
class Patchscope:
    """What the target prompt predicts next once a hidden state of the source prompt is patched into it."""

    top_ids: torch.Tensor      # [k] token ids, most probable first
    top_probs: torch.Tensor    # [k] their probabilities
    top_tokens: list[str]      # [k] the same tokens as text


IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"  # decodes the patched state into a token


@torch.no_grad()
def patchscope(model: StandardizedTransformer, source: str, layer: int, position: int = -1,
               target: str = IDENTITY_PROMPT, target_layer: int | None = None, target_position: int = -1,
               top_k: int = 5, remote: bool = False) -> Patchscope:
    """Decode the hidden state of `source` (layer output at a position) by patching it into `target`.

    One session of two traces (the target layer may come before the source layer): the source's layer-`layer`
    output at `position` replaces the target's layer-`target_layer` (default: the same layer) output at
    `target_position`; the target's next-token distribution at its last position is the readout.
    """
    with model.session(remote=remote):
        with model.trace(source):
            state = model.layers_output[layer][0, position]  # [hidden]
        with model.trace(target):
            model.layers_output[layer if target_layer is None else target_layer][0, target_position] = state
            top = model.next_token_probs[0].topk(top_k)
            probs, ids = top[0].save(), top[1].save()  # [k] each
    return Patchscope(ids.value, probs.value, _words(model, ids.value.tolist()))


# -- shared helpers -----------------------------------------------------------------------------------------------
def _ids(model: StandardizedTransformer, prompt: str) -> list[int]:
    """The token ids a trace of prompt runs on (one sequence)."""
    return _tokens.encode(prompt, model.tokenizer, model._pad_id)["input_ids"][0].tolist()


def _words(model: StandardizedTransformer, ids: list[int]) -> list[str]:
    """Each token id as text."""
    return model.tokenizer.batch_decode([[i] for i in ids])


def _label(token: str, width: int = 10) -> str:
    """A token as a short, printable label (newlines and tabs escaped, a blank token shown as ␣)."""
    text = repr(token)[1:-1] if token.strip() else "␣" * min(len(token), 3)
    return text if len(text) <= width else text[:width - 1] + "…"


def _heatmap(values: torch.Tensor, columns: list[str], rows: list[int] | list[str], path: str | os.PathLike, *,
             title: str, label: str, cells: list[list[str]], xlabel: str = "position (input token)",
             ylabel: str = "layer", origin: str = "lower", **colors: Any) -> str:
    """Write values [rows, columns] as a PNG heatmap (first row at the bottom, or top) with a label in each cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = values.shape
    figure = Figure(figsize=(2.5 + 0.9 * width, 1.5 + 0.3 * height))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(values.float().cpu().numpy(), aspect="auto", origin=origin, **colors)
    axes.set_xticks(range(width), [_label(c) for c in columns], rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(height), [_label(str(r)) for r in rows], fontsize=7)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    for r in range(height):
        for c in range(width):
            red, green, blue, _ = image.cmap(image.norm(float(values[r, c])))
            dark = 0.3 * red + 0.6 * green + 0.1 * blue < 0.5  # the cell's luminance
            axes.text(c, r, _label(cells[r][c], 8), ha="center", va="center", fontsize=6,
                      color="white" if dark else "black")
    figure.colorbar(image, ax=axes, label=label)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return str(path)
