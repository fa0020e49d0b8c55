"""Loading: how a server builds a hosted model, as a small picklable value (a Ray actor builds its own copy).

A loader names the model (`smollm2`, a transformers repo id or checkpoint path, or an importable function
`package.module:function` that returns an NNsight model) and where its weights go: `device`, `dtype`,
`device_map` (accelerate's: `auto`, `balanced`, `sequential`, or one device). `load()` builds the model
with its weights; `shell()` builds the same modules on the meta device, without weight memory, for an
API process that only checks requests.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

__all__ = ["Loader"]

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:function


@dataclass(frozen=True)
class Loader:
    """A hosted model's source and placement; checked when made, so a bad option fails before any load."""

    ref: str
    device: Optional[str] = None
    dtype: Optional[str] = None
    device_map: Optional[str] = None

    def __post_init__(self) -> None:
        if self.device is not None and self.device_map is not None:
            raise ValueError("give a device or a device map, not both (a device map places every module)")
        if self.device is not None:
            _device(self.device)
        if self.dtype not in (None, "auto"):
            _dtype(self.dtype)
        if self.device_map is not None:
            if self.device_map not in DEVICE_MAPS:
                _device(self.device_map, f"device map {self.device_map!r}: give one of {', '.join(DEVICE_MAPS)} "
                                         "or a device")
            if self.is_function:
                raise ValueError(f"a device map places the modules of a transformers checkpoint; {self.ref!r} is "
                                 "a function: give a device instead")

    @property
    def is_function(self) -> bool:
        """Whether `ref` names an importable function rather than a checkpoint."""
        return bool(_FUNCTION.fullmatch(self.ref))

    def load(self) -> Any:
        """The model with its weights, placed as asked."""
        if self.device is not None and _device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r}: this machine has no CUDA device torch can use")
        if self.is_function:
            model = _function(self.ref)()
            model._model.to(device=self.device, dtype=None if self.dtype in (None, "auto") else _dtype(self.dtype))
            return model
        model = self._language_model()
        model.dispatch()
        return model

    def shell(self) -> Any:
        """The model's modules on the meta device: its name, structure and parameter count, no weights."""
        if self.is_function:
            with torch.device("meta"):
                return _function(self.ref)()
        return self._language_model()

    def _language_model(self) -> Any:
        """A LanguageModel of `ref`, not loaded yet, with the placement keywords for `from_pretrained`."""
        options: dict[str, Any] = {}
        if self.dtype is not None:
            options["dtype"] = self.dtype if self.dtype == "auto" else _dtype(self.dtype)
        if self.device is not None or self.device_map is not None:
            options["device_map"] = self.device or self.device_map
        if self.ref == "smollm2":
            from ..models import smollm2
            return smollm2(**options)
        from ..modeling.language import LanguageModel
        return LanguageModel(self.ref, **options)


def _device(name: str, problem: str = "") -> torch.device:
    """The torch device named `name`; ValueError (saying `problem`) if there is none of that name."""
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(problem or f"unknown device {name!r}: give e.g. cpu, cuda, cuda:1 or mps") from error


def _dtype(name: str) -> torch.dtype:
    """The floating-point torch dtype named `name` (`auto` is the checkpoint's own; not a dtype here)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown dtype {name!r}: give auto, float32, bfloat16, float16 or float64")
    return dtype


def _function(ref: str) -> Callable[[], Any]:
    """The function `package.module:function` names."""
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise LookupError(f"cannot import the model function {ref!r}: {error}") from error
