"""Budget: tensor sizes checked before they are allocated, while a job runs (a torch function mode)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["LimitExceeded", "Budget"]


class LimitExceeded(RuntimeError):
    """A job asked for more than one of the server's limits; the message names the limit."""


def _tensor_and_torch(names: str) -> set[Any]:
    found = set()
    for name in names.split():
        found.update(getattr(owner, name) for owner in (torch, torch.Tensor) if hasattr(owner, name))
    return found


# Calls whose result can be much larger than their inputs: their size is worked out on the meta device first.
_SIZED = _tensor_and_torch("""
    zeros ones empty full rand randn randint randperm arange linspace logspace eye normal
    new_zeros new_ones new_empty new_full repeat tile expand expand_as broadcast_to repeat_interleave
    kron outer cartesian_prod einsum matmul mm bmm baddbmm addmm cdist tensordot block_diag meshgrid
    cat concat concatenate stack hstack vstack dstack column_stack __matmul__ __rmatmul__ one_hot
""") | {torch.nn.functional.one_hot}
_FACTORIES = _tensor_and_torch("zeros ones empty full rand randn randint randperm arange linspace logspace eye")
_LISTS = {torch.Tensor.tolist}  # results that become Python objects (about 30 bytes per element)


class Budget(TorchFunctionMode):
    """Refuses any torch call of the running job whose result would exceed `max_elements` per tensor."""

    def __init__(self, max_elements: int, max_list_elements: int) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.max_list_elements = max_list_elements

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SIZED:
            self.check(func, _planned(func, args, kwargs), self.max_elements)
        elif func in _LISTS:
            self.check(func, args[0].numel(), self.max_list_elements)
        else:
            self.check(func, _broadcast(args), self.max_elements)
        return func(*args, **kwargs)

    def check(self, func: Any, elements: int, limit: int) -> None:
        """Raise LimitExceeded if a call would make more than `limit` elements."""
        if elements > limit:
            name = getattr(func, "__name__", str(func))
            raise LimitExceeded(f"'{name}' would make a tensor of {elements:,} elements; this server's limit "
                                f"is {limit:,} elements per tensor (Limits.max_tensor_elements).")


def _planned(func: Any, args: tuple, kwargs: dict) -> int:
    """The largest tensor a call would make, worked out on the meta device (0 if that is not possible)."""
    try:
        with torch.no_grad():
            meta_args, meta_kwargs = pytree.tree_map(_meta, (args, kwargs))
            if func in _FACTORIES:
                meta_kwargs["device"] = "meta"
            result = func(*meta_args, **meta_kwargs)
    except Exception:  # data-dependent sizes or bad arguments: the real call decides
        return 0
    return max((leaf.numel() for leaf in pytree.tree_leaves(result) if isinstance(leaf, torch.Tensor)), default=0)


def _meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, torch.Tensor) else value


def _broadcast(args: tuple) -> int:
    """The element count of the tensor arguments broadcast together (0 where they do not broadcast)."""
    shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    if len(shapes) < 2:
        return 0
    try:
        return math.prod(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return 0
