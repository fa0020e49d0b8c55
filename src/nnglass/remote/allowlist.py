"""Allow-list: the only functions a graph may call when it crosses the wire."""
from __future__ import annotations

import builtins
import functools
import operator
from typing import Any

import einops
import torch
from torch.utils.data import DataLoader

from ..intervention import cache


class WireError(ValueError):
    """A graph or value that cannot cross the wire: a refused target, an unknown type, bad data."""


# Builtin torch functions that are not tensor operations.
_TORCH_DENIED = {"from_file", "import_ir_module", "import_ir_module_from_buffer", "parse_ir",
                 "parse_schema", "parse_type_comment", "merge_type_from_type_comment",
                 "unify_type_list", "fork", "wait", "compiled_with_cxx11_abi"}
# Python-level torch functions that are plain tensor operations.
_TORCH_PYTHON = ("einsum", "split", "chunk", "norm", "tensordot", "meshgrid", "cdist", "unique",
                 "broadcast_tensors", "atleast_1d", "atleast_2d", "atleast_3d", "block_diag",
                 "cartesian_prod", "chain_matmul", "unravel_index", "stft", "istft")
# Tensor methods reached through __torch_function__ (e.g. `tensor * proxy`, `tensor[proxy]`).
_TENSOR_DUNDERS = {f"__{op}__" for base in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
                                           "and", "or", "xor", "lshift", "rshift")
                   for op in (base, "r" + base, "i" + base)} | {
    "__getitem__", "__setitem__", "__neg__", "__pos__", "__abs__", "__invert__", "__lt__", "__le__",
    "__eq__", "__ne__", "__gt__", "__ge__", "__len__", "__contains__"}
_TENSOR_DENIED = {"storage", "untyped_storage", "share_memory_", "data_ptr", "storage_offset", "apply_",
                  "map_", "map2_", "register_hook", "register_post_accumulate_grad_hook", "pin_memory"}
_BUILTINS = ("list", "dict", "tuple", "set", "int", "float", "str", "bool", "bytes", "bytearray",
             "complex", "len", "abs", "min", "max", "sum", "range", "round", "sorted", "reversed",
             "enumerate", "zip", "any", "all", "slice")
_EINOPS = ("rearrange", "reduce", "repeat", "einsum", "pack", "unpack")
_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")


@functools.cache
def by_name() -> dict[str, Any]:
    """Every allowed callable under the name it travels by."""
    allowed: dict[str, Any] = {}
    for name in dir(torch):
        value = getattr(torch, name)
        if (not name.startswith("_") and type(value).__name__ == "builtin_function_or_method"
                and not name.startswith("set_") and name not in _TORCH_DENIED):
            allowed[f"torch.{name}"] = value
    allowed.update({f"torch.{name}": getattr(torch, name) for name in _TORCH_PYTHON})
    functional = torch.nn.functional
    for name in dir(functional):
        value = getattr(functional, name)
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", "").startswith("torch"):
            allowed[f"torch.nn.functional.{name}"] = value
    for name in dir(torch.Tensor):
        value = getattr(torch.Tensor, name)
        if callable(value) and (not name.startswith("_") or name in _TENSOR_DUNDERS) and name not in _TENSOR_DENIED:
            allowed[f"torch.Tensor.{name}"] = value
    allowed.update({f"operator.{name}": getattr(operator, name) for name in dir(operator)
                    if not name.startswith("_") and name not in ("attrgetter", "methodcaller", "call")})
    allowed.update({f"einops.{name}": getattr(einops, name) for name in _EINOPS})
    allowed.update({f"builtins.{name}": getattr(builtins, name) for name in _BUILTINS})
    allowed.update({f"torch.optim.{name}": getattr(torch.optim, name) for name in _OPTIMIZERS})
    allowed["torch.nn.Parameter"] = torch.nn.Parameter
    allowed["torch.utils.data.DataLoader"] = DataLoader
    allowed["nnglass.cache.Cache"] = cache.Cache
    allowed["nnglass.cache.put"] = cache.put
    return allowed


@functools.cache
def _names() -> dict[int, str]:
    return {id(value): name for name, value in by_name().items()}


def name_of(fn: Any) -> str:
    """The wire name of an allowed callable; refuses anything else."""
    name = _names().get(id(fn))
    if name is None:
        label = getattr(fn, "__qualname__", None) or repr(fn)
        raise WireError(f"'{label}' is not allowed in a remote graph: only torch, torch.nn.functional, "
                        f"operator, einops, builtins, optimizers and nnglass built-ins can run on the server.")
    return name


def function(name: str) -> Any:
    """The allowed callable of a wire name; refuses anything else."""
    fn = by_name().get(name)
    if fn is None:
        raise WireError(f"'{name}' is not an allowed function on this server.")
    return fn


def attribute(name: Any) -> str:
    """An attribute or method name a graph may use: no private or dunder names."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise WireError(f"attribute '{name}' is not allowed in a remote graph (private and dunder names are refused).")
    return name
