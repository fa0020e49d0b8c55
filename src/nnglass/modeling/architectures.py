"""Per-architecture facts: where the standard modules are, and how the attention projections hold the heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ARCHITECTURES", "PROJECTIONS", "MODEL_NAMES", "LAYER_NAMES", "ArchitectureError", "Projections",
           "names_of", "path_of", "projections_of"]


class ArchitectureError(ValueError):
    """The model lacks a standard module, or a standard module has unexpected shapes."""


# Standard name -> original module path, per `config.model_type`. Model-level names are paths from the
# model; `self_attn`, `mlp` and `router` (of a mixture of experts) are paths inside each layer. A name left out
# is called by its standard name (`router`: absent); None: the architecture has no such module.
_LLAMA = {"embed_tokens": "model.embed_tokens", "layers": "model.layers", "ln_final": "model.norm"}
ARCHITECTURES: dict[str, dict[str, str | None]] = {
    "gpt2": {"embed_tokens": "transformer.wte", "layers": "transformer.h", "self_attn": "attn",
             "ln_final": "transformer.ln_f"},
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,
    "olmo2": _LLAMA,
    "phi3": _LLAMA,
    "mixtral": {**_LLAMA, "router": "mlp.gate"},    # mlp: the sparse mixture-of-experts block
    "qwen2_moe": {**_LLAMA, "router": "mlp.gate"},
    "gpt_neox": {"embed_tokens": "gpt_neox.embed_in", "layers": "gpt_neox.layers", "self_attn": "attention",
                 "ln_final": "gpt_neox.final_layer_norm"},
    "opt": {"embed_tokens": "model.decoder.embed_tokens", "layers": "model.decoder.layers", "mlp": None,
            "ln_final": "model.decoder.final_layer_norm"},
    "phi": {**_LLAMA, "ln_final": "model.final_layernorm"},
}
MODEL_NAMES = ("embed_tokens", "layers", "ln_final", "lm_head")
LAYER_NAMES = ("self_attn", "mlp", "router")
_ABSENT_UNLESS_NAMED = ("router",)  # standard names that only some architectures have


@dataclass(frozen=True)
class Projections:
    """The modules of an attention block that hold the heads: the q, k, v and output (o) projections.

    The input of o is the heads' concatenated attention output. When q, k and v name one fused module,
    `layout` says how its output holds them: "stacked" is [q heads | k heads | v heads] (GPT-2, Phi-3),
    "interleaved" is [q k v of head 0 | q k v of head 1 | ...] (GPT-NeoX).
    """

    q: str
    k: str
    v: str
    o: str
    layout: str = "separate"


_SEPARATE = Projections("q_proj", "k_proj", "v_proj", "o_proj")
# Per model type; a type of the table left out has the separate q_proj/k_proj/v_proj/o_proj.
PROJECTIONS: dict[str, Projections] = {
    "gpt2": Projections("c_attn", "c_attn", "c_attn", "c_proj", "stacked"),
    "phi3": Projections("qkv_proj", "qkv_proj", "qkv_proj", "o_proj", "stacked"),
    "gpt_neox": Projections("query_key_value", "query_key_value", "query_key_value", "dense", "interleaved"),
    "opt": Projections("q_proj", "k_proj", "v_proj", "out_proj"),
    "phi": Projections("q_proj", "k_proj", "v_proj", "dense"),
}


def path_of(names: dict[str, str | None], standard: str) -> str | None:
    """The original path of a standard name under a name map (None: the architecture has no such module)."""
    return names.get(standard, None if standard in _ABSENT_UNLESS_NAMED else standard)


def names_of(config: Any, names: dict[str, str | None] | None) -> dict[str, str | None]:
    """The standard-name map: the one given, else the table's entry for the config's model type."""
    if names is not None:
        return names
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ArchitectureError(f"No standard names for architecture '{kind}' (known: {', '.join(ARCHITECTURES)}). "
                                f"Pass names={{standard name: module path}} for "
                                f"{', '.join(MODEL_NAMES + LAYER_NAMES)}.")
    return ARCHITECTURES[kind]


def projections_of(config: Any) -> Projections | None:
    """How this architecture's attention modules hold the heads (None: no per-head accessors)."""
    kind = getattr(config, "model_type", None)
    return PROJECTIONS.get(kind, _SEPARATE if kind in ARCHITECTURES else None)
