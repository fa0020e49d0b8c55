"""Token inputs of a LanguageModel: every accepted input form as left-padded input_ids and attention_mask."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

INPUT_KEYS = ("input_ids", "attention_mask")
EMBEDS = "inputs_embeds"  # an invoke may give embeddings [batch, tokens, hidden] instead of token ids
# Keywords of a tokenizer call that change how text becomes tokens.
TOKENIZER_KEYS = frozenset({
    "padding", "truncation", "max_length", "stride", "add_special_tokens", "pad_to_multiple_of",
    "padding_side", "return_token_type_ids", "is_split_into_words", "text_pair",
})
_FORMS = ("a string, a list of strings, token ids (a list of ints, a list of lists of ints, a 1-D or 2-D "
          "integer tensor) or a tokenizer output (a dict or BatchEncoding with input_ids and attention_mask)")


def encode(value: Any, tokenizer: Any, pad_id: int, **tokenizer_kwargs: Any) -> dict[str, torch.Tensor]:
    """One invoke's input as left-padded `input_ids` and `attention_mask`, both [batch, tokens]."""
    if _is_chat(value) or _is_list_of(value, list) and all(_is_chat(item) for item in value):
        value = render_chat(value, tokenizer)
    if isinstance(value, str) or _is_list_of(value, str):
        if tokenizer is None:
            raise ValueError("Text inputs need a tokenizer: pass `LanguageModel(model, tokenizer=...)`, "
                             "or give token ids.")
        value = tokenizer([value] if isinstance(value, str) else list(value),
                          **{"padding": True, **tokenizer_kwargs, "return_tensors": "pt"})
        side = tokenizer_kwargs.get("padding_side", getattr(tokenizer, "padding_side", None))
        if side == "left" and "attention_mask" in value:
            return {key: value[key].long() for key in INPUT_KEYS}  # already what we need: the fast path
    elif tokenizer_kwargs:
        raise TypeError(f"Tokenizer keywords {sorted(tokenizer_kwargs)} apply only to text inputs, "
                        f"not to {type(value).__name__}.")
    if isinstance(value, Mapping):
        if "input_ids" not in value:
            raise TypeError(f"A dict input needs an 'input_ids' entry; it has {sorted(value)}.")
        mask = value.get("attention_mask")
        return _justify(_rows(value["input_ids"]), None if mask is None else _rows(mask), pad_id)
    return _justify(_rows(value), None, pad_id)


def embedded(embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """An invoke given as `inputs_embeds` [batch, tokens, hidden], with its mask (all ones when not given)."""
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
        raise TypeError("inputs_embeds must be a tensor [batch, tokens, hidden].")
    if attention_mask is None:
        attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return {EMBEDS: embeds, "attention_mask": torch.as_tensor(attention_mask).long()}


def left_pad(batch: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Widen left-padded `input_ids` (or `inputs_embeds`, padded with zeros) and `attention_mask` to width tokens."""
    name = EMBEDS if EMBEDS in batch else "input_ids"
    values, mask = batch[name], batch["attention_mask"]
    missing = width - values.shape[1]
    if missing == 0:
        return batch
    fill = values.new_zeros if name == EMBEDS else lambda shape: values.new_full(shape, pad_id)
    return {name: torch.cat([fill((values.shape[0], missing, *values.shape[2:])), values], dim=1),
            "attention_mask": torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)}


def render_chat(value: Any, tokenizer: Any) -> str | list[str]:
    """Chat messages (a list of role/content dicts, or a list of such lists) as text by the chat template."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("Chat messages need a tokenizer with a chat template.")
    if _is_chat(value):
        return tokenizer.apply_chat_template(list(value), tokenize=False, add_generation_prompt=True)
    return [render_chat(item, tokenizer) for item in value]


def _is_chat(value: Any) -> bool:
    """Whether value is one conversation: a list of dicts with a role and a content."""
    return _is_list_of(value, Mapping) and all("role" in m and "content" in m for m in value)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [batch, tokens] that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _is_list_of(value: Any, kind: type | tuple[type, ...]) -> bool:
    """Whether value is a non-empty list or tuple whose items are all of kind."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, kind) for v in value)


def _rows(value: Any) -> list[torch.Tensor]:
    """Token ids (or a mask) in any accepted form as a list of 1-D long tensors, one per sequence."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.is_complex() or value.ndim not in (1, 2):
            raise TypeError(f"A LanguageModel input tensor must hold integer token ids in 1 or 2 dimensions; "
                            f"got a {value.ndim}-D {value.dtype} tensor.")
        return list((value if value.ndim == 2 else value[None]).long().cpu())
    if _is_list_of(value, int):
        return [torch.tensor(value, dtype=torch.long)]
    if _is_list_of(value, (list, tuple, torch.Tensor)):
        return [row for item in value for row in _rows(item)]
    raise TypeError(f"A LanguageModel input must be {_FORMS}; got {_describe(value)}.")


def _justify(ids: list[torch.Tensor], masks: list[torch.Tensor] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Move each row's real tokens to the right end; keep the width of rectangular inputs."""
    if not ids:
        raise ValueError("A LanguageModel input must hold at least one sequence.")
    if masks is None:
        masks = [torch.ones_like(row) for row in ids]
    if len(masks) != len(ids) or any(m.shape != r.shape for m, r in zip(masks, ids)):
        raise ValueError("attention_mask must have the same shape as input_ids.")
    real = [row[mask.bool()] for row, mask in zip(ids, masks)]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # [batch, width]
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)  # [batch, width]
    for i, row in enumerate(real):
        if len(row):
            input_ids[i, width - len(row):] = row
            attention_mask[i, width - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _describe(value: Any) -> str:
    """What a rejected input is, for the error message: `a list of float`."""
    if isinstance(value, (list, tuple)):
        inner = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {', '.join(inner)}" if inner else f"an empty {type(value).__name__}"
    return type(value).__name__
