"""Inside attention: hook points for attention probabilities and rotated q/k, per-head views of q, k, v and z."""
from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..intervention.envoy import Envoy
from ..tracing.proxy import Proxy
from .architectures import Projections
from .language import WrapperModule

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["PROBS_IMPLEMENTATION", "PROBE", "ROTATED", "HeadSizes", "Heads", "install_probes", "say_switched",
           "attention_through_probe"]

PROBS_IMPLEMENTATION = "nnglass_eager"  # the attention implementation that passes weights through the probe
PROBE = "attention_probs"               # the identity submodule each attention module gets for its weights
ROTATED = ("q_rot", "k_rot")          # and for q and k as attention multiplies them (after rotary)
logger = logging.getLogger("nnglass")


# -- attention probabilities --------------------------------------------------------------------------------------
def attention_through_probe(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own eager attention, through hook points for q and k (`q_rot`, `k_rot`) and the weights.

    q and k pass `module.q_rot` / `module.k_rot` on the way in, the softmaxed weights `module.attention_probs`
    before they multiply V. The weights [batch, heads, queries, keys] come from the architecture's
    `eager_attention_forward` (scaling, soft-capping, masks and dropout as the model does them); what the hook
    points return, edits included, is what attention uses.
    """
    eager = sys.modules[type(module).__module__].eager_attention_forward
    query, key = module.q_rot(query), module.k_rot(key)  # [batch, heads or kv_heads, positions, head_dim]
    _, weights = eager(module, query, key, value[..., :1], attention_mask, **kwargs)  # a 1-wide V: weights only
    weights = getattr(module, PROBE)(weights)
    values = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)  # GQA: a kv head per query group
    return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights  # [batch, queries, heads, head_dim]


@functools.cache
def _register() -> None:
    """Make `PROBS_IMPLEMENTATION` a transformers attention implementation (with eager attention's masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PROBS_IMPLEMENTATION, attention_through_probe)
    AttentionMaskInterface.register(PROBS_IMPLEMENTATION, eager_mask)


def install_probes(model: PreTrainedModel, attentions: list[torch.nn.Module]) -> str:
    """Add identity hook points (`attention_probs`, `q_rot`, `k_rot`) to each attention module; switch to them.

    Returns the attention implementation it replaced.
    """
    _register()
    for attention in attentions:
        for name in (PROBE, *ROTATED):
            attention.add_module(name, WrapperModule())
    previous = model.config._attn_implementation
    model.set_attn_implementation(PROBS_IMPLEMENTATION)
    return previous


def say_switched(previous: str) -> None:
    """Log that attention now runs through the probes, and what it costs."""
    logger.warning("enable_attention_probs: attention switched from '%s' to eager attention ('%s'), so that "
                   "attention_probabilities can be read and edited; it is slower and uses more memory.",
                   previous, PROBS_IMPLEMENTATION)


# -- per-head views ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSizes:
    """The head counts and width of an architecture."""

    heads: int       # query heads
    kv_heads: int    # key and value heads (fewer than heads under grouped-query attention)
    head_dim: int

    @classmethod
    def of(cls, config: Any) -> HeadSizes:
        """The sizes a transformers config declares."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads)

    def block(self, part: str) -> tuple[int, int]:
        """(first head, number of heads) of q, k or v in a stacked [q | k | v] projection output."""
        return {"q": (0, self.heads), "k": (self.heads, self.kv_heads),
                "v": (self.heads + self.kv_heads, self.kv_heads)}[part]


class _HeadValue:
    """One value of `Heads` (q, k, v, z, q_rot, k_rot): read with `Heads.read`, assigned with `Heads.write`."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __get__(self, heads: Heads | None, owner: type) -> Any:
        return self if heads is None else heads.read(self.part)

    def __set__(self, heads: Heads, value: Any) -> None:
        heads.write(self.part, value)


class Heads:
    """`model.heads[i]`: per-head views [batch, heads, positions, head_dim] of layer i's attention.

    `q`, `k`, `v` are the outputs of the q/k/v projections split into heads: BEFORE any q/k norm (Qwen3, OLMo2,
    Gemma3) and BEFORE rotary embeddings, like TransformerLens's hook_q/hook_k/hook_v. Under grouped-query
    attention `k` and `v` have `num_key_value_heads` heads. `z` is each head's attention output (the input of the
    output projection, split into heads). Reads are views; `heads.q[:, 3] = 0` and `heads.q = x` write through
    them into the model's own tensors, so the edits reach the rest of the forward pass.

    `q_rot` and `k_rot` (with `enable_attention_probs=True`) are q and k as attention multiplies them: AFTER q/k
    norm and rotary embeddings where the architecture has them (TransformerLens's hook_rot_q/hook_rot_k); `k_rot`
    holds every key position, cached ones included. Read them, edit them in place, or assign them.
    """

    q = _HeadValue("q")
    k = _HeadValue("k")
    v = _HeadValue("v")
    z = _HeadValue("z")
    q_rot = _HeadValue("q_rot")
    k_rot = _HeadValue("k_rot")

    def __init__(self, attention: Envoy, projections: Projections, sizes: HeadSizes) -> None:
        self._attention = attention
        self._projections = projections
        self._sizes = sizes

    def read(self, part: str) -> Proxy:
        """The value [batch, heads, positions, head_dim] of q, k, v, z, q_rot or k_rot."""
        return self._hook_point(part).output if part in ROTATED else self.view(part)

    def write(self, part: str, value: Any) -> None:
        """Assign: q_rot and k_rot replace the hook point's output; the others write through the view in place."""
        if part in ROTATED:
            self._hook_point(part).output = value
        else:
            self.view(part)[:] = value

    def _hook_point(self, name: str) -> Envoy:
        """The attention module's hook point of that name; a clear error when the probes are not installed."""
        if name not in self._attention._children:
            raise ValueError(f"heads[i].{name} needs StandardizedTransformer(..., enable_attention_probs=True), "
                             f"which adds that hook point to attention.")
        return self._attention.get(name)

    def view(self, part: str) -> Proxy:
        """The per-head view [batch, heads, positions, head_dim] of q, k, v or z."""
        width = self._sizes.head_dim
        if part == "z":
            return _split_heads(self._attention.get(self._projections.o).input, width)
        flat = self._attention.get(getattr(self._projections, part)).output  # [batch, positions, width of all]
        if self._projections.layout == "stacked":
            first, count = self._sizes.block(part)
            flat = flat[:, :, first * width:(first + count) * width]
        elif self._projections.layout == "interleaved":
            index = "qkv".index(part)
            return flat.unflatten(-1, (-1, 3 * width))[..., index * width:(index + 1) * width].transpose(1, 2)
        return _split_heads(flat, width)


def _split_heads(flat: Proxy, head_dim: int) -> Proxy:
    """[batch, positions, heads * head_dim] as a view [batch, heads, positions, head_dim]."""
    return flat.unflatten(-1, (-1, head_dim)).transpose(1, 2)
