"""LanguageModel: a transformers causal language model with its tokenizer, lazy weights and generation."""
from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import torch

from ..intervention.envoy import Envoy
from ..intervention.trace import Trace
from ..tracing.local import suspended
from . import tokens
from ..util import WrapperModule
from .base import NNsight, backend_for, batch_slices, library_options

__all__ = ["LanguageModel", "WrapperModule"]

if TYPE_CHECKING:  # transformers is imported on first use: `import nnglass` stays fast
    from transformers import PreTrainedModel

# `from_pretrained` keywords that also say where the config and tokenizer come from.
_SOURCE_KEYS = ("revision", "trust_remote_code", "cache_dir", "token", "local_files_only", "subfolder")


class LanguageModel(NNsight):
    """A transformers causal LM: text inputs, batching of invokes with left padding, `generate`.

    `LanguageModel(path_or_id, **kwargs)` builds the model on the meta device (no weight memory) and
    loads the weights with `from_pretrained(path_or_id, **kwargs)` on the first run, or at once with
    `dispatch=True`. `LanguageModel(model, tokenizer=tokenizer)` wraps a model already built.
    """

    def __init__(self, model: str | os.PathLike | PreTrainedModel, *, tokenizer: Any = None,
                 automodel: Any = None, dispatch: bool = False, tokenizer_kwargs: dict | None = None,
                 rename: dict[str, str | list[str]] | None = None, envoys: Any = ..., **kwargs: Any) -> None:
        loaded = isinstance(model, torch.nn.Module)
        self._source = None if loaded else str(model)
        self._automodel = automodel or _auto_causal_lm()
        self._load_kwargs = kwargs
        module = model if loaded else _meta_model(self._automodel, self._source, kwargs)
        self._generator = WrapperModule()  # ours, not added to the user's model
        self._generator.streamer = WrapperModule()  # the prompt's ids, then each step's new tokens
        self._prepare(module)
        super().__init__(module, rename, envoys)
        self._mount_generator()
        self._remote_name = self._source  # a server hosts it under the repo id or path it was built from
        self._dispatched = loaded
        source = self._source or _local_checkpoint(module)
        if tokenizer is None and source is not None:
            tokenizer = _load_tokenizer(source, {**_pick(kwargs, _SOURCE_KEYS), **(tokenizer_kwargs or {})})
        self.tokenizer = tokenizer
        if self.tokenizer is not None and self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        parameters = inspect.signature(module.forward).parameters
        self._takes_positions = "position_ids" in parameters
        self._keeps_logits = "logits_to_keep" in parameters  # generate computes the last token's logits only
        if dispatch:
            self.dispatch()

    # -- loading ------------------------------------------------------------------------------------
    @property
    def dispatched(self) -> bool:
        """Whether the real weights are loaded (False while the model lives on the meta device)."""
        return self._dispatched

    def dispatch(self) -> None:
        """Load the real weights (once) and point every envoy at the loaded modules."""
        if self._dispatched:
            return
        with suspended():  # loading may happen inside a session: its torch calls are not graph nodes
            module = self._automodel.from_pretrained(self._source, **self._load_kwargs)
        self._prepare(module)
        self._model = module
        self._modules_by_path = dict(module.named_modules())
        self._mount_generator()
        _repoint(self, self._modules_by_path)
        self._scans.clear()
        self._dispatched = True

    def _prepare(self, module: torch.nn.Module) -> None:
        """Add hook points a subclass needs to a model just built or loaded (none here)."""

    def _mount_generator(self) -> None:
        """`model.generator` (the generated ids) and `model.generator.streamer` (the ids as they come): hook
        points next to the model's own modules."""
        self._modules_by_path["generator"] = self._generator
        self._modules_by_path["generator.streamer"] = self._generator.streamer
        self._children["generator"] = Envoy(self._generator, "generator")

    def __repr__(self) -> str:
        """The model's module tree, with the generator at the end (as nnsight prints it)."""
        generator = repr(self._generator).replace("\n", "\n  ")  # indented as torch prints children
        return repr(self._model)[:-1] + f"  (generator): {generator}\n)"

    # -- running ------------------------------------------------------------------------------------
    def trace(self, *inputs: Any, trace: bool = True, scan: bool = False, validate: bool = False,
              invoker_args: dict | None = None, remote: bool = False, blocking: bool = True, **kwargs: Any) -> Any:
        """`with model.trace(prompt):` one forward pass; keywords other than tokenizer ones go to the model."""
        return self._run("forward", inputs, kwargs, trace=trace, scan=scan, validate=validate,
                         invoker_args=invoker_args, remote=remote, blocking=blocking)

    def generate(self, *inputs: Any, trace: bool = True, scan: bool = False, validate: bool = False,
                 invoker_args: dict | None = None, remote: bool = False, blocking: bool = True,
                 **kwargs: Any) -> Any:
        """`with model.generate(prompt, max_new_tokens=n):` generation; module calls are the steps (`.next()`).

        Keywords other than tokenizer ones (`max_new_tokens`, `do_sample`, `max_length`, ...) go to the
        model's `generate`; give tokenizer keywords such as `max_length` through `invoker_args`.
        """
        return self._run("generate", inputs, kwargs, trace=trace, scan=scan, validate=validate,
                         invoker_args=invoker_args, remote=remote, blocking=blocking)

    def scan(self, *inputs: Any, **kwargs: Any) -> Trace:
        """`with model.scan(prompt):` shapes and dtypes without running (or loading) the model."""
        invoke_kwargs, call_kwargs = _split(kwargs, "forward")
        return Trace(self, inputs, invoke_kwargs, scan=True, run=False, call_kwargs=call_kwargs)

    def edit(self, inplace: bool = False) -> Any:
        """`with model.edit() as edited:` as for NNsight; loads the weights first, so copies share them."""
        self.dispatch()
        return super().edit(inplace)

    def _run(self, method: str, inputs: tuple, kwargs: dict, *, trace: bool, remote: bool, blocking: bool,
             **options: Any) -> Any:
        """A Tracer that runs `method`; with `trace=False` the output at once (generated ids for generate)."""
        options["invoker_args"] = library_options(kwargs, options["invoker_args"])
        invoke_kwargs, call_kwargs = _split(kwargs, method)
        if method == "forward":
            _check_forward_keywords(self._model, call_kwargs)
        if not remote:
            self.dispatch()
        tracer = Trace(self, inputs, invoke_kwargs, method=method, call_kwargs=call_kwargs,
                       backend=backend_for(remote, blocking, at_once=not trace), **options)
        if trace:
            return tracer
        with tracer:
            output = (self.generator if method == "generate" else self).output.save()
        return output.value

    # -- what NNsight leaves to subclasses ----------------------------------------------------------------
    def _prepare_inputs(self, *inputs: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        """One invoke's input as left-padded input_ids and attention_mask [batch, tokens] (or inputs_embeds)."""
        if tokens.EMBEDS in kwargs and not inputs:
            batch = tokens.embedded(kwargs.pop(tokens.EMBEDS), kwargs.pop("attention_mask", None))
            return (), batch, batch[tokens.EMBEDS].shape[0]
        given = {key: kwargs.pop(key) for key in tokens.INPUT_KEYS if key in kwargs}
        if given:
            inputs = (*inputs, given)
        if len(inputs) != 1:
            raise TypeError(f"A LanguageModel invoke takes one input (a prompt, a list of prompts, token ids "
                            f"or a tokenizer output), got {len(inputs)}.")
        with suspended():  # tokenizing makes real tensors, not graph nodes
            batch = tokens.encode(inputs[0], self.tokenizer, self._pad_id, **kwargs)
        if batch["input_ids"].shape[-1] == 0:
            raise ValueError("The input has zero tokens (an empty prompt): give at least one token.")
        return (), batch, batch["input_ids"].shape[0]

    def _invoker_inputs(self, prepared: tuple[tuple, dict, int]) -> tuple[tuple, dict]:
        """`invoker.inputs` as nnsight 0.4 has it: `((BatchEncoding(input_ids, attention_mask),), {})`."""
        from transformers import BatchEncoding

        return (BatchEncoding(prepared[1]),), {}

    def _batch(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict, list[tuple[int, int]], int]:
        """Left-pad every invoke to the longest one and stack them into one batch."""
        if len(prepared) == 1:  # one invoke: already a batch
            _, batch, size = prepared[0]
            return (), batch, [(0, size)], size
        if len({frozenset(kwargs) for _, kwargs, _ in prepared}) > 1:
            raise TypeError("Every invoke must give text or token ids, or every invoke inputs_embeds: "
                            "all invokes run as one batch.")
        width = max(kwargs["attention_mask"].shape[1] for _, kwargs, _ in prepared)
        padded = [tokens.left_pad(kwargs, width, self._pad_id) for _, kwargs, _ in prepared]
        batch = {key: torch.cat([p[key] for p in padded]) for key in padded[0]}  # [total, width, ...]
        return (), batch, *batch_slices([size for _, _, size in prepared])

    def _scan_records(self, args: tuple, kwargs: dict, needed: Any = None, method: str = "forward",
                      call_kwargs: dict | None = None) -> dict:
        """As NNsight's; `generate` with weights not loaded (fake tensors cannot say when it stops) is
        scanned as its first step: the prompt's forward, its rows copied per beam or return sequence."""
        if method == "generate" and not self.dispatched:
            beams, sequences = self._copies(call_kwargs or {})
            copies = beams if beams > 1 else sequences  # rows of generate's first forward
            kwargs = {k: v.repeat_interleave(copies, 0) if isinstance(v, torch.Tensor) else v
                      for k, v in kwargs.items()}
            method, call_kwargs = "forward", {"logits_to_keep": 1} if self._keeps_logits else {}
        return super()._scan_records(args, kwargs, needed, method, call_kwargs)

    def _copies(self, call_kwargs: dict) -> tuple[int, int]:
        """(beams, return sequences) of a generate call: the copies it makes of each row."""
        config = getattr(self._model, "generation_config", None)
        beams = call_kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
        sequences = call_kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
        return beams, sequences

    def _batch_factors(self, method: str, call_kwargs: dict) -> frozenset[int]:
        """Row copies `generate` makes: beams and return sequences (each row's copies sit together)."""
        if method != "generate":
            return frozenset({1})
        beams, sequences = self._copies(call_kwargs)
        return frozenset({1, beams, sequences, beams * sequences})

    def _execute(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> Any:
        """One forward pass; position ids count real tokens, so a padded prompt sees what it sees alone."""
        inputs = self._on_device(input_ids=input_ids, attention_mask=attention_mask,
                                 inputs_embeds=kwargs.pop(tokens.EMBEDS, None))
        if self._takes_positions:
            kwargs.setdefault("position_ids", tokens.positions(inputs["attention_mask"]))
        return self._model(**inputs, **kwargs)

    def _generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                  **kwargs: Any) -> Any:
        """`model.generate(...)`; its output goes through `generator` so that `.generator.output` sees it."""
        kwargs.setdefault("pad_token_id", self._pad_id)
        inputs = self._on_device(input_ids=input_ids, attention_mask=attention_mask,
                                 inputs_embeds=kwargs.pop(tokens.EMBEDS, None))
        if self._copies(kwargs)[0] == 1:  # transformers streams no beam search
            kwargs["streamer"] = _Relay(self._generator.streamer, kwargs.get("streamer"))
        output = self._model.generate(**inputs, **kwargs)
        return self._generator(output)

    # -- helpers ------------------------------------------------------------------------------------------
    @property
    def _pad_id(self) -> int:
        """The token id that fills padding: the tokenizer's pad token, else the config's pad or eos."""
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        config = self._model.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        return 0 if pad is None else pad

    def _on_device(self, **tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The given inputs moved to the model's (first) device, meta included (scans of a model not loaded yet)."""
        device = self._model.device
        return {name: t.to(device) for name, t in tensors.items() if t is not None}


class _Relay:
    """The streamer `generate` is given: each `put` of ids goes through the `generator.streamer` hook point,
    then on to the user's own streamer, if any."""

    def __init__(self, module: torch.nn.Module, streamer: Any) -> None:
        self.module, self.streamer = module, streamer

    def put(self, ids: torch.Tensor) -> None:
        ids = self.module(ids)
        if self.streamer is not None:
            self.streamer.put(ids)

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()


def _split(kwargs: dict, method: str) -> tuple[dict, dict]:
    """Keywords of the inputs (tokenizer, input_ids, attention_mask) and keywords of the model call."""
    for_inputs = set(tokens.TOKENIZER_KEYS) | set(tokens.INPUT_KEYS) | {tokens.EMBEDS}
    if method == "generate":
        for_inputs.discard("max_length")  # a generation length when given to generate
    invoke = {k: v for k, v in kwargs.items() if k in for_inputs}
    call = {k: v for k, v in kwargs.items() if k not in for_inputs}
    return invoke, call


# Keywords transformers' forward decorators take out of `**kwargs` before the forward sees them.
_DECORATOR_KEYS = frozenset({"return_dict", "past_key_values", "cache_position", "output_attentions",
                             "output_hidden_states"})


def _check_forward_keywords(model: torch.nn.Module, kwargs: dict) -> None:
    """Refuse a keyword the model's forward cannot take, rather than let its `**kwargs` swallow it."""
    parameters = inspect.signature(model.forward).parameters.values()
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    rest = next((p for p in parameters if p.kind is p.VAR_KEYWORD), None)
    if rest is not None:
        typed = next((a for a in getattr(rest.annotation, "__args__", ()) if hasattr(a, "__annotations__")), None)
        if typed is None:
            return  # an untyped **kwargs: nothing tells what it takes
        named |= set(typed.__annotations__) | _DECORATOR_KEYS
    unknown = [name for name in kwargs if name not in named]
    if unknown:
        raise TypeError(f"{type(model).__name__}.forward takes no keyword argument {unknown[0]!r} (its keywords: "
                        f"{', '.join(sorted(named - {'self'}))}); tokenizer keywords go through invoker_args.")


def _pick(kwargs: dict, keys: tuple[str, ...]) -> dict:
    """The entries of kwargs named in keys."""
    return {k: kwargs[k] for k in keys if k in kwargs}


def _meta_model(automodel: Any, source: str, kwargs: dict) -> PreTrainedModel:
    """The model built from its config on the meta device: every module, no weight memory."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, **_pick(kwargs, _SOURCE_KEYS))
    build = _pick(kwargs, ("attn_implementation", "experts_implementation", "trust_remote_code"))
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if dtype is not None and dtype != "auto":
        build["dtype"] = dtype
    with torch.device("meta"):
        return automodel.from_config(config, **build)


def _load_tokenizer(source: str, kwargs: dict) -> Any:
    """The checkpoint's tokenizer, padding on the left."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **{"padding_side": "left", **kwargs})


def _auto_causal_lm() -> Any:
    """transformers' AutoModelForCausalLM (imported on first use)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _local_checkpoint(module: torch.nn.Module) -> str | None:
    """The local directory a built model was loaded from, if any (where its tokenizer may be)."""
    path = getattr(module, "name_or_path", "")
    return path if path and os.path.isdir(path) else None


def _repoint(envoy: Envoy, modules: dict[str, torch.nn.Module]) -> None:
    """Point an envoy subtree at the modules of the same paths (after the weights are loaded)."""
    envoy._module = modules[envoy._path]
    for child in envoy._children.values():
        _repoint(child, modules)
