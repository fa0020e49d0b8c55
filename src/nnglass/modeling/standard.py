"""StandardizedTransformer: one set of module names and accessors over decoder-only architectures."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from ..intervention.envoy import Envoy
from ..tracing.proxy import Proxy
from .language import LanguageModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Standard name -> original module path, per `config.model_type`. Model-level names are paths from the
# model; `self_attn` and `mlp` are paths inside each layer. A name left out is called by its standard name;
# None: the architecture has no such module.
_LLAMA = {"embed_tokens": "model.embed_tokens", "layers": "model.layers", "ln_final": "model.norm"}
ARCHITECTURES: dict[str, dict[str, str | None]] = {
    "gpt2": {"embed_tokens": "transformer.wte", "layers": "transformer.h", "self_attn": "attn",
             "ln_final": "transformer.ln_f"},
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gpt_neox": {"embed_tokens": "gpt_neox.embed_in", "layers": "gpt_neox.layers", "self_attn": "attention",
                 "ln_final": "gpt_neox.final_layer_norm"},
    "opt": {"embed_tokens": "model.decoder.embed_tokens", "layers": "model.decoder.layers", "mlp": None,
            "ln_final": "model.decoder.final_layer_norm"},
    "phi": {**_LLAMA, "ln_final": "model.final_layernorm"},
}
MODEL_NAMES = ("embed_tokens", "layers", "ln_final", "lm_head")
LAYER_NAMES = ("self_attn", "mlp")
_PROBE_TOKENS = 2  # length of the fake input the load-time check runs


class ArchitectureError(ValueError):
    """The model lacks a standard module, or a standard module has unexpected shapes."""


class LayerValues:
    """`model.layers_output[i]`: read, or assign (`= x`), one value of a module in every layer.

    When the module returns a tuple, the value is its first element and an assignment rebuilds the tuple.
    """

    def __init__(self, model: StandardizedTransformer, component: str | None, kind: str) -> None:
        self._model = model
        self._component = component  # None: the layer itself, else "self_attn" or "mlp"
        self._kind = kind            # "input" or "output"
        self._width = model._tuple_widths[component] if kind == "output" else 0  # 0: not a tuple

    def __getitem__(self, layer: int) -> Proxy:
        value = getattr(self._envoy(layer), self._kind)
        return value[0] if self._width else value

    def __setitem__(self, layer: int, value: Any) -> None:
        envoy = self._envoy(layer)
        if self._width:
            rest = envoy.output
            value = (value, *(rest[k] for k in range(1, self._width)))
        setattr(envoy, self._kind, value)

    def __len__(self) -> int:
        return self._model.num_layers

    def _envoy(self, layer: int) -> Envoy:
        """The envoy of this module in one layer."""
        return _part(self._model.layers[layer], self._component)


class StandardizedTransformer(LanguageModel):
    """A LanguageModel whose modules answer to the same names on every architecture.

    `embed_tokens`, `layers[i]`, `layers[i].self_attn`, `layers[i].mlp`, `ln_final`, `lm_head` are aliases
    of the original modules (hooks and `tracer.cache` keys stay on the original paths). `names=` maps the
    standard names to module paths for an architecture not in `ARCHITECTURES`.
    """

    def __init__(self, model: str | os.PathLike | PreTrainedModel, *, names: dict[str, str | None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._names = _names_of(self._model.config, names)
        self._mount()
        self._tuple_widths = self._check_shapes()

    # -- accessors (inside a trace) -------------------------------------------------------------------
    @property
    def layers_input(self) -> LayerValues:
        """Each layer's input hidden states [batch, tokens, hidden]."""
        return LayerValues(self, None, "input")

    @property
    def layers_output(self) -> LayerValues:
        """Each layer's output hidden states [batch, tokens, hidden]."""
        return LayerValues(self, None, "output")

    @property
    def attentions_input(self) -> LayerValues:
        """Each attention module's input hidden states [batch, tokens, hidden]."""
        return LayerValues(self, "self_attn", "input")

    @property
    def attentions_output(self) -> LayerValues:
        """Each attention module's output [batch, tokens, hidden] (the first element of its tuple)."""
        return LayerValues(self, "self_attn", "output")

    @property
    def mlps_input(self) -> LayerValues:
        """Each MLP's input [batch, tokens, hidden]."""
        return LayerValues(self, self._mlp(), "input")

    @property
    def mlps_output(self) -> LayerValues:
        """Each MLP's output [batch, tokens, hidden]."""
        return LayerValues(self, self._mlp(), "output")

    @property
    def logits(self) -> Proxy:
        """The lm_head output [batch, tokens, vocab]."""
        return self.lm_head.output

    @property
    def next_token_probs(self) -> Proxy:
        """Softmax of the last position's logits [batch, vocab]."""
        return self.logits[:, -1, :].softmax(-1)

    # -- sizes ---------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def num_heads(self) -> int:
        """Number of attention heads per layer."""
        return self._model.config.num_attention_heads

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return self._model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Number of tokens the lm_head scores."""
        return self._model.config.vocab_size

    # -- loading -------------------------------------------------------------------------------------------
    def _mount(self) -> None:
        """Alias the original modules under the standard names; name every missing one in one error."""
        missing = [f"{std} (no module '{path}')" for std, path in self._paths(MODEL_NAMES)
                   if not _exists(self, path)]
        if not missing:
            first = self.get(self._names.get("layers", "layers"))[0]
            missing = [f"layers[i].{std} (no module '{path}' in '{first._path}')"
                       for std, path in self._paths(LAYER_NAMES) if not _exists(first, path)]
        if missing:
            raise ArchitectureError(f"{type(self._model).__name__} lacks standard modules: {'; '.join(missing)}. "
                                    f"Pass names={{standard name: module path}} to map them.")
        self._add_aliases({"." + path: std for std, path in self._paths(MODEL_NAMES) if path != std})
        inner = {"." + path: std for std, path in self._paths(LAYER_NAMES) if path != std}
        for layer in self.layers:
            layer._add_aliases(inner)

    def _paths(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """(standard name, original path) of the given standard names that this architecture has."""
        return [(std, self._names.get(std, std)) for std in names if self._names.get(std, std) is not None]

    @property
    def _components(self) -> list[str | None]:
        """The modules of a layer that have accessors: None (the layer itself), self_attn, and mlp if any."""
        return [None, "self_attn"] + ([] if self._names.get("mlp", "mlp") is None else ["mlp"])

    def _mlp(self) -> str:
        """The standard MLP name, or a clear error where the architecture has no single MLP module."""
        if "mlp" not in self._components:
            children = ", ".join(self.layers[0]._children)
            raise ArchitectureError(f"{type(self._model).__name__} has no single MLP module in its layers "
                                    f"(a layer's modules: {children}), so mlps_input/mlps_output do not exist; "
                                    f"use those modules through model.layers[i].")
        return "mlp"

    def _check_shapes(self) -> dict[str | None, int]:
        """Run a fake forward pass; check every standard module's shapes; give each's output tuple width."""
        ids = torch.zeros((1, _PROBE_TOKENS), dtype=torch.long)  # [batch, tokens]
        records = self._scan_records((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        layers = getattr(self._model.config, "num_hidden_layers", self.num_layers)
        if layers != self.num_layers:
            raise ArchitectureError(f"'layers' has {self.num_layers} modules, the config says {layers}.")
        hidden = (1, _PROBE_TOKENS, self.hidden_size)  # [batch, tokens, hidden]
        expected = [("embed_tokens", self.embed_tokens, "output", hidden),
                    ("ln_final", self.ln_final, "output", hidden),
                    ("lm_head", self.lm_head, "output", (*hidden[:2], self.vocab_size))]
        for i, layer in enumerate(self.layers):
            for component in self._components:
                name = f"layers[{i}]" + (f".{component}" if component else "")
                envoy = _part(layer, component)
                expected += [(name, envoy, "inputs", hidden), (name, envoy, "output", hidden)]
        for name, envoy, kind, shape in expected:
            _check(records, name, envoy._path, kind, shape)
        first = self.layers[0]
        return {c: _width(records[(_part(first, c)._path, "output", 0)]) for c in self._components}


def _names_of(config: Any, names: dict[str, str | None] | None) -> dict[str, str | None]:
    """The standard-name map: the one given, else the table's entry for the config's model type."""
    if names is not None:
        return names
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ArchitectureError(f"No standard names for architecture '{kind}' (known: {', '.join(ARCHITECTURES)}). "
                                f"Pass names={{standard name: module path}} for "
                                f"{', '.join(MODEL_NAMES + LAYER_NAMES)}.")
    return ARCHITECTURES[kind]


def _part(layer: Envoy, component: str | None) -> Envoy:
    """A layer (component None) or one of its standard modules."""
    return layer if component is None else getattr(layer, component)


def _exists(envoy: Envoy, path: str) -> bool:
    """Whether a module exists at a dotted path below envoy."""
    try:
        envoy.get(path)
    except AttributeError:
        return False
    return True


def _first(value: Any) -> Any:
    """A module output's main tensor: the value, or the first element of a tuple."""
    return value[0] if isinstance(value, tuple) else value


def _width(value: Any) -> int:
    """The length of a tuple output, 0 for anything else."""
    return len(value) if isinstance(value, tuple) else 0


def _check(records: dict, name: str, path: str, kind: str, shape: tuple[int, ...]) -> None:
    """Fail, naming the module, unless its recorded input or output has the expected shape."""
    record = records.get((path, kind, 0))
    if record is None:
        raise ArchitectureError(f"{name} (module '{path}') did not run in a forward pass.")
    if kind == "inputs":
        args, kwargs = record
        record = args[0] if args else next(iter(kwargs.values()), None)
    found = tuple(getattr(_first(record), "shape", ()))
    if found != shape:
        raise ArchitectureError(f"The {kind.rstrip('s')} of {name} (module '{path}') has shape {found}; "
                                f"expected {shape} ([batch, tokens, hidden_size or vocab_size]).")
