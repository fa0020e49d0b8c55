"""nnsight's `nnsight.util`: helpers that notebooks call directly."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .tracing.walk import map_leaves

__all__ = ["apply", "WrapperModule"]


def apply(data: Any, fn: Callable[[Any], Any], cls: type | tuple[type, ...], inplace: bool = False) -> Any:
    """Call fn on every value of type cls inside nested data (lists, tuples, dicts, ...); the rebuilt data.

    `inplace=True` also writes the new values into the lists and dicts of data itself, as 0.4 did.
    """
    mapped = map_leaves(data, lambda leaf: fn(leaf) if isinstance(leaf, cls) else leaf)
    if inplace:
        _write_back(data, mapped)
    return mapped


def _write_back(data: Any, mapped: Any) -> None:
    """Copy mapped's items into the mutable containers of data, recursively."""
    if isinstance(data, list):
        for i, item in enumerate(mapped):
            _write_back(data[i], item)
            data[i] = item if not isinstance(item, (list, dict)) else data[i]
    elif isinstance(data, dict):
        for key, item in mapped.items():
            _write_back(data[key], item)
            data[key] = item if not isinstance(item, (list, dict)) else data[key]


class WrapperModule(torch.nn.Module):
    """An identity module: a hook point for values no module of the model produces (generated ids)."""

    def forward(self, value: Any) -> Any:
        """Return value unchanged."""
        return value
