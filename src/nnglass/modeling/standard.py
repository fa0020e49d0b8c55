"""StandardizedTransformer: one set of module names and accessors over decoder-only architectures."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..intervention.envoy import Envoy
from ..tracing.proxy import Proxy
from .architectures import (ARCHITECTURES, LAYER_NAMES, MODEL_NAMES, ArchitectureError, names_of, path_of,
                            projections_of)
from .heads import PROBE, Heads, HeadSizes, install_probes, say_switched
from .language import LanguageModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["StandardizedTransformer", "LayerModules", "LayerValues", "LayerHeads", "ArchitectureError",
           "ARCHITECTURES"]

_PROBE_TOKENS = 2  # length of the fake input the load-time check runs


class LayerModules:
    """`model.attentions[i]`, `model.mlps[i]`: one module of every layer, as envoys.

    `path` is the module's path inside a layer (a standard name such as "self_attn" works); None: the layer.
    """

    def __init__(self, model: StandardizedTransformer, path: str | None) -> None:
        self._model = model
        self._path = path

    def __getitem__(self, layer: int) -> Any:
        return _part(self._model.layers[layer], self._path)

    def __len__(self) -> int:
        return self._model.num_layers


class LayerValues(LayerModules):
    """`model.layers_output[i]`: read, or assign (`= x`), one value of a module in every layer.

    When the module returns a tuple, the value is its first element and an assignment rebuilds the tuple.
    """

    def __init__(self, model: StandardizedTransformer, path: str | None, kind: str) -> None:
        super().__init__(model, path)
        self._kind = kind  # "input" or "output"
        self._width = model._tuple_widths.get(path, 0) if kind == "output" else 0  # 0: not a tuple

    def __getitem__(self, layer: int) -> Proxy:
        value = getattr(super().__getitem__(layer), self._kind)
        return value[0] if self._width else value

    def __setitem__(self, layer: int, value: Any) -> None:
        envoy = super().__getitem__(layer)
        if self._width:
            rest = envoy.output
            value = (value, *(rest[k] for k in range(1, self._width)))
        setattr(envoy, self._kind, value)


class LayerHeads(LayerModules):
    """`model.heads[i]`: the per-head views (`Heads`) of layer i's attention."""

    def __getitem__(self, layer: int) -> Heads:
        return Heads(super().__getitem__(layer), self._model._projections, self._model.head_sizes)


class StandardizedTransformer(LanguageModel):
    """A LanguageModel whose modules answer to the same names on every architecture.

    `embed_tokens`, `layers[i]`, `layers[i].self_attn`, `layers[i].mlp`, `ln_final`, `lm_head` (and
    `layers[i].router` in a mixture of experts) are aliases of the original modules (hooks and `tracer.cache`
    keys stay on the original paths). `names=` maps the standard names to module paths for an architecture not
    in `ARCHITECTURES`. `enable_attention_probs=True` switches attention to an eager implementation that exposes
    `attention_probabilities` and `heads[i].q_rot` / `k_rot` (and says so in the log): it adds hook-point modules
    to the model's attention modules and sets its attention implementation, on the model given. Without it the
    model's attention is left as it is.
    """

    def __init__(self, model: str | os.PathLike | PreTrainedModel, *, names: dict[str, str | None] | None = None,
                 enable_attention_probs: bool = False, **kwargs: Any) -> None:
        self._given_names = names
        self._probes = enable_attention_probs
        super().__init__(model, **kwargs)
        if enable_attention_probs:
            say_switched(self._replaced_attention)
        self._names = names_of(self._model.config, names)
        self._projections = projections_of(self._model.config) if names is None else None
        self._mount()
        self._tuple_widths = self._check_shapes()

    def _prepare(self, module: torch.nn.Module) -> None:
        """The LanguageModel hook points, and the attention-probabilities ones when asked for."""
        super()._prepare(module)
        if self._probes:
            names = names_of(module.config, self._given_names)
            layers = module.get_submodule(path_of(names, "layers"))
            attentions = [layer.get_submodule(path_of(names, "self_attn")) for layer in layers]
            self._replaced_attention = install_probes(module, attentions)

    # -- per-layer accessors (inside a trace) ---------------------------------------------------------
    @property
    def layers_input(self) -> LayerValues:
        """Each layer's input hidden states [batch, tokens, hidden]."""
        return LayerValues(self, None, "input")

    @property
    def layers_output(self) -> LayerValues:
        """Each layer's output hidden states [batch, tokens, hidden]."""
        return LayerValues(self, None, "output")

    @property
    def attentions(self) -> LayerModules:
        """Each layer's attention module (an envoy: `.input`, `.output`, its submodules)."""
        return LayerModules(self, "self_attn")

    @property
    def attentions_input(self) -> LayerValues:
        """Each attention module's input hidden states [batch, tokens, hidden]."""
        return LayerValues(self, "self_attn", "input")

    @property
    def attentions_output(self) -> LayerValues:
        """Each attention module's output [batch, tokens, hidden] (the first element of its tuple)."""
        return LayerValues(self, "self_attn", "output")

    @property
    def attention_probabilities(self) -> LayerValues:
        """Each layer's attention weights after softmax [batch, heads, queries, keys]: read, assign, edit in place."""
        if not self._probes:
            raise ValueError("attention_probabilities needs StandardizedTransformer(..., "
                             "enable_attention_probs=True), which switches attention to an eager implementation.")
        return LayerValues(self, f"self_attn.{PROBE}", "output")

    @property
    def heads(self) -> LayerHeads:
        """Each layer's per-head q, k, v (before rotary) and z, [batch, heads, positions, head_dim] (see `Heads`)."""
        if self._projections is None:
            raise ArchitectureError(f"No per-head accessors for '{self._model.config.model_type}' with this name "
                                    f"map: where its q, k, v and output projections are is not known here.")
        return LayerHeads(self, "self_attn")

    @property
    def mlps(self) -> LayerModules:
        """Each layer's MLP module (the sparse block in a mixture of experts), as envoys."""
        return LayerModules(self, self._mlp())

    @property
    def mlps_input(self) -> LayerValues:
        """Each MLP's input [batch, tokens, hidden]."""
        return LayerValues(self, self._mlp(), "input")

    @property
    def mlps_output(self) -> LayerValues:
        """Each MLP's output [batch, tokens, hidden]."""
        return LayerValues(self, self._mlp(), "output")

    @property
    def router_logits(self) -> LayerValues:
        """A mixture of experts' router logits per layer [batch * tokens, experts] (rows batch-major)."""
        if path_of(self._names, "router") is None:
            raise ArchitectureError(f"{type(self._model).__name__} has no router: it is not a mixture of experts.")
        return LayerValues(self, "router", "output")

    # -- model-level accessors (inside a trace) --------------------------------------------------------
    @property
    def input_ids(self) -> Proxy:
        """The token ids the model runs on [batch, tokens] (left-padded when invokes differ in length)."""
        return self.embed_tokens.input

    @property
    def attention_mask(self) -> Proxy:
        """The attention mask the model runs with [batch, tokens] (0 on padding)."""
        return self.inputs[1]["attention_mask"]

    @property
    def token_embeddings(self) -> Proxy:
        """The embedding module's output [batch, tokens, hidden] (scaled, where the architecture scales it)."""
        return self.embed_tokens.output

    @token_embeddings.setter
    def token_embeddings(self, value: Any) -> None:
        self.embed_tokens.output = value

    @property
    def logits(self) -> Proxy:
        """The model's logits [batch, tokens, vocab]: the lm_head output (soft-capped where the model caps it)."""
        return self._final_softcap(self.lm_head.output)

    @property
    def next_token_probs(self) -> Proxy:
        """Softmax of the last position's logits [batch, vocab]."""
        return self.logits[:, -1, :].softmax(-1)

    # -- edits and projections (inside a trace) --------------------------------------------------------
    def project_on_vocab(self, hidden: Any) -> Proxy:
        """Logits [..., vocab] of hidden states [..., hidden]: `ln_final`, then `lm_head` (graph operations)."""
        return self._final_softcap(self.lm_head(self.ln_final(hidden)))

    def skip_layers(self, start: int, end: int) -> None:
        """Layers start..end (both included) return their input: the residual stream passes them unchanged."""
        for layer in range(start, end + 1):
            self.layers_output[layer] = self.layers_input[layer]

    def steer(self, layers: int | Sequence[int], vector: Any, factor: float = 1.0,
              positions: Sequence[int] | None = None) -> None:
        """Add `factor * vector` [hidden] to the given layers' outputs (at the given positions, else all)."""
        where = slice(None) if positions is None else list(positions)
        delta = factor * vector
        for layer in [layers] if isinstance(layers, int) else layers:
            self.layers_output[layer][:, where] += delta  # output [batch, tokens, hidden]

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
    def head_sizes(self) -> HeadSizes:
        """Query heads, key/value heads and head width."""
        return HeadSizes.of(self._model.config)

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
            first = self.get(path_of(self._names, "layers"))[0]
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
        return [(std, path_of(self._names, std)) for std in names if path_of(self._names, std) is not None]

    @property
    def _components(self) -> list[str | None]:
        """The modules of a layer whose hidden states are checked: None (the layer itself), self_attn, mlp if any."""
        return [None, "self_attn"] + ([] if path_of(self._names, "mlp") is None else ["mlp"])

    def _mlp(self) -> str:
        """The standard MLP name, or a clear error where the architecture has no single MLP module."""
        if "mlp" not in self._components:
            children = ", ".join(self.layers[0]._children)
            raise ArchitectureError(f"{type(self._model).__name__} has no single MLP module in its layers "
                                    f"(a layer's modules: {children}), so mlps_input/mlps_output do not exist; "
                                    f"use those modules through model.layers[i].")
        return "mlp"

    def _final_softcap(self, logits: Any) -> Any:
        """Logits soft-capped as the model's head caps them (Gemma 2): `cap * tanh(logits / cap)`; else unchanged."""
        cap = getattr(self._model.config, "final_logit_softcapping", None)
        return logits if cap is None else (logits / cap).tanh() * cap

    def _check_shapes(self) -> dict[str | None, int]:
        """Run a fake forward pass; check every standard module's shapes; give output tuple widths by layer path."""
        records = self._probe_records()
        layers = getattr(self._model.config, "num_hidden_layers", self.num_layers)
        if layers != self.num_layers:
            raise ArchitectureError(f"'layers' has {self.num_layers} modules, the config says {layers}.")
        for name, envoy, kind, shape in self._expected_shapes():
            _check(records, name, envoy._path, kind, shape)
        first = self.layers[0]
        paths = self._components + [p for p in ("router",) if path_of(self._names, p) is not None]
        return {p: _width(records[(_part(first, p)._path, "output", 0)]) for p in paths}

    def _probe_records(self) -> dict:
        """Fake-tensor records of a [1, 2]-token forward pass; a clear error for experts fake tensors cannot run."""
        ids = torch.zeros((1, _PROBE_TOKENS), dtype=torch.long)  # [batch, tokens]
        try:
            return self._scan_records((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        except RuntimeError as error:
            if getattr(self._model.config, "_experts_implementation", None) != "grouped_mm":
                raise
            raise ArchitectureError("The shape check runs the model on fake tensors, which cannot run its "
                                    "'grouped_mm' experts here (float32 on CPU); build the model with "
                                    "experts_implementation='batched_mm'.") from error

    def _expected_shapes(self) -> list[tuple[str, Envoy, str, tuple[int, ...]]]:
        """(name, envoy, "inputs" or "output", shape) of every standard module in a [1, 2]-token forward pass."""
        hidden = (1, _PROBE_TOKENS, self.hidden_size)  # [batch, tokens, hidden]
        expected = [("embed_tokens", self.embed_tokens, "output", hidden),
                    ("ln_final", self.ln_final, "output", hidden),
                    ("lm_head", self.lm_head, "output", (*hidden[:2], self.vocab_size))]
        for i, layer in enumerate(self.layers):
            for component in self._components:
                name = f"layers[{i}]" + (f".{component}" if component else "")
                envoy = _part(layer, component)
                expected += [(name, envoy, "inputs", hidden), (name, envoy, "output", hidden)]
            expected += self._attention_shapes(i, layer.self_attn)
        return expected

    def _attention_shapes(self, i: int, attention: Envoy) -> list[tuple[str, Envoy, str, tuple[int, ...]]]:
        """The expected shapes of one attention module's probabilities hook point and head projections."""
        name, heads = f"layers[{i}].self_attn", self.head_sizes.heads
        expected = [] if self._projections is None else self._projection_shapes(name, attention)
        if self._probes:
            width, kv_heads = self.head_sizes.head_dim, self.head_sizes.kv_heads
            expected += [(f"{name}.{PROBE}", attention.get(PROBE), "output", (1, heads, _PROBE_TOKENS, _PROBE_TOKENS)),
                         (f"{name}.q_rot", attention.q_rot, "output", (1, heads, _PROBE_TOKENS, width)),
                         (f"{name}.k_rot", attention.k_rot, "output", (1, kv_heads, _PROBE_TOKENS, width))]
        return expected

    def _projection_shapes(self, name: str, attention: Envoy) -> list[tuple[str, Envoy, str, tuple[int, ...]]]:
        """The expected shapes of an attention module's q, k, v outputs and output-projection input."""
        projections, sizes = self._projections, self.head_sizes
        absent = sorted({module for module in (projections.q, projections.k, projections.v, projections.o)
                         if not _exists(attention, module)})
        if absent:
            raise ArchitectureError(f"{name} (module '{attention._path}') lacks the projections "
                                    f"{', '.join(absent)} that its per-head views read.")
        heads = {"q": sizes.heads, "k": sizes.kv_heads, "v": sizes.kv_heads}
        if projections.layout != "separate":  # one module: its whole output
            heads = {"q": sizes.heads + 2 * sizes.kv_heads}
        expected = [(f"{name}.{getattr(projections, part)}", attention.get(getattr(projections, part)), "output",
                     (1, _PROBE_TOKENS, count * sizes.head_dim)) for part, count in heads.items()]
        return expected + [(f"{name}.{projections.o}", attention.get(projections.o), "inputs",
                            (1, _PROBE_TOKENS, sizes.heads * sizes.head_dim))]


def _part(layer: Envoy, path: str | None) -> Envoy:
    """A layer (path None) or the module at a path inside it."""
    return layer if path is None else layer.get(path)


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
                                f"expected {shape} ([batch, tokens, ...]).")
