"""Values on the wire: JSON with tagged types; tensors gathered into one safetensors blob."""
from __future__ import annotations

import base64
import math
import re
import sys
from typing import Any, Callable

import safetensors.torch
import torch
from torch.utils.data import DataLoader

from ..intervention.cache import Cache, Entry, entries_of, from_entries
from ..tracing.node import Node
from ..tracing.walk import map_leaves
from .allowlist import WireError

__all__ = ["Encoder", "Decoder", "load_blob", "save_blob"]

_TAGS = {"$node", "$float", "$tuple", "$dict", "$slice", "$ellipsis", "$dtype", "$device", "$set",
         "$complex", "$bytes", "$dataloader", "$tensor", "$output", "$cache"}
_DEVICE = re.compile(r"(cpu|cuda|mps)(:[0-9]{1,2})?")
_DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


class Encoder:
    """Turns values into JSON; node references go through `ref`; tensors are collected."""

    def __init__(self, ref: Callable[[Any], Any] | None = None) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.ref = ref

    def __call__(self, value: Any) -> Any:
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is str:
            return value
        if kind is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if kind is list:
            return [self(v) for v in value]
        if kind is tuple or kind is torch.Size:
            return {"$tuple": [self(v) for v in value]}
        if kind is dict:
            return {"$dict": [[self(k), self(v)] for k, v in value.items()]}
        if self.ref is not None and kind is Node:
            return self.ref(value)
        return self.special(value)

    def special(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, slice):
            return {"$slice": [self(value.start), self(value.stop), self(value.step)]}
        if value is Ellipsis:
            return {"$ellipsis": True}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"$device": str(value)}
        if isinstance(value, (set, frozenset)):
            return {"$set": [self(v) for v in value]}
        if isinstance(value, complex):
            return {"$complex": [value.real, value.imag]}
        if isinstance(value, (bytes, bytearray)):
            return {"$bytes": base64.b64encode(value).decode(), "mutable": isinstance(value, bytearray)}
        if isinstance(value, dict) and type(value).__module__.startswith("transformers."):  # a ModelOutput
            fields = {k: v for k, v in value.items() if not _is_cache(v)}  # a KV cache stays on the server
            return {"$output": [type(value).__module__, type(value).__name__], "fields": self(fields)}
        if isinstance(value, Cache):
            entries = {path: [_without_caches((e.output, e.inputs)) for e in entries_of(entry)]
                       for path, entry in value.items()}  # a module's inputs may hold the KV cache: None here
            return {"$cache": self(entries), "paths": self(tuple(value.paths)), "aliases": self(tuple(value.aliases))}
        if isinstance(value, DataLoader):
            return {"$dataloader": {"dataset": self(list(value.dataset)), "batch_size": value.batch_size}}
        raise WireError(f"a value of type '{type(value).__qualname__}' cannot be sent to the server.")

    def tensor(self, value: torch.Tensor) -> dict:
        key = f"t{len(self.tensors)}"
        self.tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"$tensor": key, "grad": value.requires_grad,
                "param": isinstance(value, torch.nn.Parameter)}

    def blob(self) -> str:
        """The collected tensors as base64 safetensors."""
        return save_blob(self.tensors)


class Decoder:
    """Turns JSON from the wire back into values; node references go through `ref`."""

    def __init__(self, blob: str, ref: Callable[[Any], Any] | None = None) -> None:
        self.tensors = load_blob(blob)
        self.ref = ref

    def __call__(self, data: Any) -> Any:
        kind = type(data)
        if data is None or kind in (bool, int, float, str):
            return data
        if kind is list:
            return [self(v) for v in data]
        if kind is not dict or len(data) == 0:
            raise WireError(f"unexpected value on the wire: {data!r:.80}")
        tag = next(iter(data))
        handler = getattr(self, "_" + tag[1:]) if tag in _TAGS else None
        if handler is None:
            raise WireError(f"unknown value tag on the wire: {tag!r:.40}")
        return handler(data[tag], data)

    def _node(self, ref: Any, data: dict) -> Any:
        if self.ref is None:
            raise WireError("a node reference is not allowed here")
        return self.ref(ref)

    def _float(self, text: str, data: dict) -> float:
        if text not in ("nan", "inf", "-inf"):
            raise WireError(f"bad float {text!r:.20}")
        return float(text)

    def _tuple(self, items: list, data: dict) -> tuple:
        return tuple(self(v) for v in items)

    def _dict(self, items: list, data: dict) -> dict:
        return {self(k): self(v) for k, v in items}

    def _slice(self, parts: list, data: dict) -> slice:
        return slice(*(self(p) for p in parts))

    def _ellipsis(self, _: Any, data: dict) -> Any:
        return Ellipsis

    def _dtype(self, name: str, data: dict) -> torch.dtype:
        if name not in _DTYPES:
            raise WireError(f"unknown dtype {name!r:.40}")
        return _DTYPES[name]

    def _device(self, name: Any, data: dict) -> torch.device:
        if not isinstance(name, str) or not _DEVICE.fullmatch(name):
            raise WireError(f"bad device {name!r:.40} (a device is 'cpu', 'cuda' or 'cuda:N')")
        return torch.device(name)

    def _set(self, items: list, data: dict) -> set:
        return {self(v) for v in items}

    def _complex(self, parts: list, data: dict) -> complex:
        return complex(float(parts[0]), float(parts[1]))

    def _bytes(self, text: str, data: dict) -> bytes | bytearray:
        raw = base64.b64decode(text)
        return bytearray(raw) if data.get("mutable") else raw

    def _dataloader(self, spec: dict, data: dict) -> DataLoader:
        size = spec["batch_size"]
        if type(size) is not int or size < 1:
            raise WireError(f"bad DataLoader batch size {size!r:.20}")
        return DataLoader(self(spec["dataset"]), batch_size=size)

    def _cache(self, entries: Any, data: dict) -> Cache:
        """A `tracer.cache()` dict: entries by module path, with the model's paths and aliases for lookups."""
        cache = Cache(self(data["paths"]), self(data["aliases"]))
        for path, calls in self(entries).items():
            cache[path] = from_entries([Entry(output, inputs) for output, inputs in calls])
        return cache

    def _output(self, where: list, data: dict) -> Any:
        """A transformers ModelOutput, of a class from a transformers module already imported here."""
        module = sys.modules.get(str(where[0])) if str(where[0]).startswith("transformers.") else None
        cls = getattr(module, str(where[1]), None)
        base = getattr(sys.modules.get("transformers.utils"), "ModelOutput", None)
        if not (isinstance(cls, type) and base is not None and issubclass(cls, base)):
            raise WireError(f"unknown model output class {where!r:.80}")
        return cls(**self(data["fields"]))

    def _tensor(self, key: str, data: dict) -> torch.Tensor:
        if key not in self.tensors:
            raise WireError(f"missing tensor {key!r:.20}")
        tensor = self.tensors[key]
        if data.get("param"):
            return torch.nn.Parameter(tensor, requires_grad=bool(data.get("grad")))
        return tensor.requires_grad_(bool(data.get("grad")))


def save_blob(tensors: dict[str, torch.Tensor]) -> str:
    """Tensors by name as base64 safetensors ("" for none)."""
    return base64.b64encode(safetensors.torch.save(tensors)).decode() if tensors else ""


def load_blob(blob: str) -> dict[str, torch.Tensor]:
    """The tensors of a base64 safetensors blob by name; WireError if it cannot be read."""
    try:
        return safetensors.torch.load(base64.b64decode(blob)) if blob else {}
    except Exception as error:
        raise WireError(f"the tensors of the request could not be read: {error}") from error


def _without_caches(value: Any) -> Any:
    """value with each transformers KV cache inside it replaced by None (a KV cache stays on the server)."""
    return map_leaves(value, lambda leaf: None if _is_cache(leaf) else leaf)


def _is_cache(value: Any) -> bool:
    """Whether value is a transformers KV cache (not sent back: it is of no use away from the model)."""
    return any(c.__module__ == "transformers.cache_utils" for c in type(value).__mro__)
