"""Capabilities: the only operations, attributes and keywords a graph may use when it crosses the wire.

Every entry is listed by name (nothing is taken from `dir(torch)`); each one only computes on values the
job owns. Chosen from what the seed documents, the walkthrough tests and nnsight's tutorials use, plus
the pure tensor math around them. Left out on purpose: storage, file, numpy and sparse access, device
moves, hooks, `data`, `grad_fn`, `_version`, string formatting, global torch state (seeds, defaults).
"""
from __future__ import annotations

import builtins
import functools
import operator
from typing import Any, Callable

import einops
import torch
from torch.utils.data import DataLoader

from ..intervention import cache
from ..tracing import runtime

__all__ = ["WireError", "by_name", "name_of", "function", "attribute", "check_node", "check_model_keywords",
           "METHODS", "ATTRIBUTES", "SETTABLE", "KEYWORDS", "MODEL_KEYWORDS"]


class WireError(ValueError):
    """A graph or value that cannot cross the wire: a refused target, an unknown type, bad data."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# torch.<name>: tensor math, creation and shape functions.
_TORCH = _words("""
    abs absolute acos acosh add addbmm addcdiv addcmul addmm addmv addr all allclose amax amin aminmax angle
    any arange arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argsort argwhere asin asinh
    atan atan2 atanh atleast_1d atleast_2d atleast_3d baddbmm bernoulli bitwise_and bitwise_not bitwise_or
    bitwise_xor block_diag bmm broadcast_shapes broadcast_tensors broadcast_to bucketize cartesian_prod cat
    cdist ceil chunk clamp clamp_max clamp_min clip clone column_stack complex concat concatenate conj
    corrcoef cos cosh cosine_similarity count_nonzero cov cross cummax cummin cumprod cumsum deg2rad det diag
    diag_embed diagonal diff digamma dist div divide dot dsplit dstack einsum empty empty_like eq equal erf
    erfc erfinv exp exp2 expm1 eye flatten flip fliplr flipud float_power floor floor_divide fmax fmin fmod
    frac full full_like gather gcd ge greater greater_equal gt heaviside hsplit hstack hypot i0 imag index_add
    index_copy index_fill index_select inner inverse is_complex is_floating_point is_nonzero is_tensor isclose
    isfinite isin isinf isnan isneginf isposinf isreal kron kthvalue lcm ldexp le lerp less less_equal lgamma
    linspace log log10 log1p log2 log_softmax logaddexp logaddexp2 logcumsumexp logdet logical_and
    logical_not logical_or logical_xor logit logspace logsumexp lt masked_fill masked_scatter masked_select
    matmul max maximum mean median meshgrid min minimum mm mode moveaxis movedim msort mul multinomial
    multiply mv nan_to_num nanmean nanmedian nanquantile nansum narrow ne neg negative nonzero norm normal
    not_equal numel ones ones_like outer permute polar pow prod quantile rad2deg rand rand_like randint
    randint_like randn randn_like randperm ravel real reciprocal relu remainder renorm repeat_interleave
    reshape result_type roll rot90 round rsqrt scatter scatter_add scatter_reduce searchsorted select sgn
    sigmoid sign signbit sin sinc sinh slogdet softmax sort split sqrt square squeeze stack std std_mean sub
    subtract sum svd swapaxes swapdims t take take_along_dim tan tanh tensor tensor_split tensordot tile topk
    trace transpose trapezoid tril triu true_divide trunc unbind unflatten unique unique_consecutive
    unravel_index unsqueeze var var_mean vsplit vstack where xlogy zeros zeros_like
""")
# torch.nn.functional.<name>: activations, losses, normalisation.
_FUNCTIONAL = _words("""
    binary_cross_entropy binary_cross_entropy_with_logits cosine_similarity cross_entropy dropout elu
    embedding gelu glu gumbel_softmax hardtanh huber_loss kl_div l1_loss layer_norm leaky_relu linear
    log_softmax logsigmoid mse_loss nll_loss normalize one_hot pad pairwise_distance relu rms_norm selu
    sigmoid silu smooth_l1_loss softmax softmin softplus tanh
""")
# Methods, by name, whatever the object: tensor methods and the few list, dict and optimizer methods a
# graph uses. Every name is harmless on every object a graph can reach (no `format`, no `register_*`).
METHODS = _words("""
    abs absolute acos add add_ addcdiv addcmul addmm all amax amin angle any argmax argmin argsort argwhere
    bfloat16 bool ceil chunk clamp clamp_ clamp_max clamp_min clip clone contiguous copy_ cos cosh cpu
    count_nonzero cummax cummin cumprod cumsum detach diag diag_embed diagonal diff dim div div_ divide dot
    double eq equal erf exp expand expand_as fill_ fill_diagonal_ flatten flip float floor floor_divide fmod
    gather ge gt half index_add index_add_ index_copy index_fill index_fill_ index_select int inverse
    is_complex is_contiguous is_floating_point isfinite isinf isnan item kthvalue le lerp log log10 log1p
    log2 log_softmax logical_and logical_not logical_or logsumexp long lt masked_fill masked_fill_
    masked_scatter masked_select matmul max maximum mean median min minimum mm mode moveaxis movedim mul mul_
    multinomial mv nan_to_num nanmean nansum narrow ne neg nelement new_empty new_full new_ones new_tensor
    new_zeros nonzero norm numel outer permute pow pow_ prod quantile reciprocal relu remainder renorm repeat
    repeat_interleave requires_grad_ reshape reshape_as retain_grad roll rot90 round rsqrt scatter scatter_
    scatter_add scatter_add_ select sigmoid sign sin sinh size softmax sort split sqrt square squeeze std
    sub sub_ sum swapaxes t tan tanh tile to tolist topk trace transpose tril triu true_divide trunc type_as
    unbind unflatten unique unsqueeze var view view_as where zero_
    append extend insert index count keys values items get
    step zero_grad
""")
# Attributes a graph may read: tensor metadata, model-output fields, named-tuple fields (topk, max).
ATTRIBUTES = _words("""
    shape dtype device ndim T mT H mH real imag is_leaf requires_grad grad
    logits loss last_hidden_state hidden_states attentions sequences scores values indices
""")
SETTABLE = _words("requires_grad grad")  # attributes a graph may set (on its own tensors)
# Keyword arguments of functions and methods (einops takes any axis name with an int length).
KEYWORDS = _words("""
    dim dims keepdim dtype k largest sorted p eps weight bias reduction ignore_index label_smoothing reduce
    size_average lr momentum dampening weight_decay betas nesterov amsgrad maximize requires_grad size low
    high start end step steps base value alpha beta min max diagonal offset dim0 dim1 dim2 source
    destination shifts repeats output_size index src mask other input tensors chunks sections indices
    split_size_or_sections split_size return_inverse return_counts descending stable unbiased correction
    num_classes inplace negative_slope approximate training mode margin target log_target full threshold
    tau hard exponent scale decimals nan posinf neginf fill_value num_samples replacement mean std q
    interpolation as_tuple upper right side rounding_mode pad atol rtol equal_nan invert assume_unique
    ord normalized_shape batch_size shuffle drop_last _stacklevel
""")
# Keywords of the model's forward and generate, and of its tokenizer (a trace's or an invoke's keywords).
MODEL_KEYWORDS = _words("""
    input_ids inputs_embeds attention_mask position_ids token_type_ids labels use_cache return_dict output_hidden_states
    output_attentions max_new_tokens min_new_tokens max_length min_length do_sample temperature top_k top_p
    typical_p repetition_penalty no_repeat_ngram_size num_beams num_return_sequences length_penalty
    early_stopping pad_token_id eos_token_id bos_token_id return_dict_in_generate output_scores output_logits
    padding truncation add_special_tokens
""")
_OPERATORS = _words("""
    abs add and_ contains eq floordiv ge getitem gt iadd iand ifloordiv imatmul imod imul inv invert ior
    ipow isub itruediv ixor le lt matmul mod mul ne neg not_ or_ pos pow setitem sub truediv truth xor
""")
_TENSOR_DUNDERS = {f"__{op}__" for base in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
                                           "and", "or", "xor") for op in (base, "r" + base, "i" + base)} | {
    "__getitem__", "__setitem__", "__neg__", "__pos__", "__abs__", "__invert__", "__lt__", "__le__",
    "__eq__", "__ne__", "__gt__", "__ge__", "__len__", "__contains__"}
_BUILTINS = _words("list dict tuple set int float str bool complex len abs min max sum range round sorted "
                   "reversed enumerate zip any all slice")
_EINOPS = _words("rearrange reduce repeat einsum")
_OPTIMIZERS = _words("SGD Adam AdamW RMSprop Adagrad")


def _data_loader(dataset: Any, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader in this process (no worker processes, samplers or collate functions)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


@functools.cache
def by_name() -> dict[str, Any]:
    """Every allowed callable (as the client holds it) under the name it travels by."""
    allowed: dict[str, Any] = {f"torch.{name}": getattr(torch, name) for name in _TORCH}
    allowed.update({f"torch.nn.functional.{name}": getattr(torch.nn.functional, name) for name in _FUNCTIONAL})
    allowed.update({f"torch.Tensor.{name}": getattr(torch.Tensor, name)
                    for name in sorted(METHODS | _TENSOR_DUNDERS) if hasattr(torch.Tensor, name)})
    allowed.update({f"operator.{name}": getattr(operator, name) for name in _OPERATORS})
    allowed.update({f"einops.{name}": getattr(einops, name) for name in _EINOPS})
    allowed.update({f"builtins.{name}": getattr(builtins, name) for name in _BUILTINS})
    allowed.update({f"torch.optim.{name}": getattr(torch.optim, name) for name in _OPTIMIZERS})
    allowed["torch.nn.Parameter"] = torch.nn.Parameter
    allowed["torch.utils.data.DataLoader"] = DataLoader
    allowed["nnglass.cache.Cache"] = cache.Cache
    allowed["nnglass.cache.put"] = cache.put
    allowed["nnglass.fstring"] = runtime.join_fields
    return allowed


# What the server runs for a name, where that differs from the client's callable.
_SERVER: dict[str, Callable[..., Any]] = {"torch.utils.data.DataLoader": _data_loader}


@functools.cache
def _names() -> dict[int, str]:
    return {id(value): name for name, value in by_name().items()}


def name_of(fn: Any) -> str:
    """The wire name of an allowed callable; refuses anything else."""
    name = _names().get(id(fn))
    if name is None:
        label = getattr(fn, "__qualname__", None) or repr(fn)
        raise WireError(f"'{label}' is not allowed in a remote graph: only the tensor operations listed in "
                        f"nnglass.remote.allowlist can run on the server.")
    return name


def function(name: Any) -> Any:
    """The callable the server runs for a wire name; refuses anything else."""
    fn = by_name().get(name) if isinstance(name, str) else None
    if fn is None:
        raise WireError(f"'{name!s:.80}' is not an allowed function on this server.")
    return _SERVER.get(name, fn)


_ALLOWED = {"getattr": (ATTRIBUTES, "reading attribute"), "setattr": (SETTABLE, "setting attribute"),
            "call_method": (METHODS, "method")}


def attribute(op: str, name: Any) -> str:
    """An attribute or method name that `op` may use; refuses every name off its list."""
    allowed, what = _ALLOWED[op]
    if not isinstance(name, str) or name not in allowed:
        why = " (private and dunder names are refused)" if str(name).startswith("_") else ""
        raise WireError(f"{what} '{name!s:.80}' is not allowed in a remote graph{why}; {_listing(allowed)}.")
    return name


def check_node(op: str, target: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a call's keyword names off the list, `.to` with anything but dtypes or the CPU, unknown exit scopes."""
    where = f"{op} '{target!s:.60}'"
    if op in ("call_function", "call_method") and not str(target).startswith("einops."):
        _check_names(kwargs, KEYWORDS, f"keyword argument of {where}")
    if op == "call_method" and target == "to" and not all(isinstance(a, torch.dtype) or _is_cpu(a) for a in args[1:]):
        raise WireError(f"{where}: use .to(dtype) or .to('cpu') (moves to other devices are not allowed).")
    if op == "exit" and target not in ("session", "loop"):
        raise WireError(f"exit: unknown scope {target!r:.20} (a session or a loop)")


def _is_cpu(device: Any) -> bool:
    """Whether a `.to` argument names the CPU (where results are sent from anyway)."""
    return device == "cpu" or isinstance(device, torch.device) and device.type == "cpu"


def check_model_keywords(kwargs: Any, where: str) -> None:
    """Refuse keywords to the model's forward, generate or tokenizer that are off the list."""
    if isinstance(kwargs, dict):
        _check_names(kwargs, MODEL_KEYWORDS, f"keyword argument of {where}")


def _check_names(kwargs: dict, allowed: frozenset[str], what: str) -> None:
    for name in kwargs:
        if name not in allowed:
            raise WireError(f"{what} '{name!s:.60}' is not allowed on this server; {_listing(allowed)}.")


def _listing(allowed: frozenset[str]) -> str:
    """The allowed names, or where to read them when there are many."""
    if len(allowed) <= 40:
        return "allowed: " + ", ".join(sorted(allowed))
    return "the allowed names are listed in nnglass.remote.allowlist"
