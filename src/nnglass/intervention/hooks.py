"""Hooks: which value of a module an eproperty views (nnsight's `requires_output` / `requires_input`)."""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["requires_output", "requires_input"]


def requires_output(stub: Callable[..., Any]) -> Callable[..., Any]:
    """The eproperty views the module's output."""
    stub.nnglass_value = "output"  # type: ignore[attr-defined]
    return stub


def requires_input(stub: Callable[..., Any]) -> Callable[..., Any]:
    """The eproperty views the module's inputs, as (args, kwargs)."""
    stub.nnglass_value = "inputs"  # type: ignore[attr-defined]
    return stub
