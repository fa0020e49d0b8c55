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
# Products, by the argument that is the left factor: their work is output elements x that factor's last size.
_PRODUCTS = {**dict.fromkeys(_tensor_and_torch("matmul mm bmm __matmul__"), 0), torch.Tensor.__rmatmul__: 1,
             **dict.fromkeys(_tensor_and_torch("addmm baddbmm"), 1)}


class Budget(TorchFunctionMode):
    """Refuses a torch call of the running job that would make a tensor of more than `max_elements`,
    a list of more than `max_list_elements`, or a product of more than `max_products` multiply-adds
    (which bounds how long one C call runs: the time limit is checked only between Python calls)."""

    def __init__(self, max_elements: int, max_list_elements: int, max_products: int) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.max_list_elements = max_list_elements
        self.max_products = max_products

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SIZED:
            elements = _planned(func, args, kwargs)
            self.check(func, elements, self.max_elements, "elements per tensor", "max_tensor_elements")
            if func in _PRODUCTS:
                work = elements * _left(args, _PRODUCTS[func])
                self.check(func, work, self.max_products, "multiply-adds per call", "max_products")
        elif func in _LISTS:
            self.check(func, args[0].numel(), self.max_list_elements, "list elements", "max_list_elements")
        else:
            self.check(func, _broadcast(args), self.max_elements, "elements per tensor", "max_tensor_elements")
        return func(*args, **kwargs)

    def check(self, func: Any, amount: int, limit: int, what: str, field: str) -> None:
        """Raise LimitExceeded, naming the limit, if a call needs more than `limit`."""
        if amount > limit:
            name = getattr(func, "__name__", str(func))
            raise LimitExceeded(f"'{name}' would need {amount:,} {what}; this server's limit is {limit:,} "
                                f"(Limits.{field}).")


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


def _left(args: tuple, position: int) -> int:
    """The last size of a product's left factor (1 if it has none)."""
    left = args[position] if len(args) > position else None
    return left.shape[-1] if isinstance(left, torch.Tensor) and left.ndim else 1


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
