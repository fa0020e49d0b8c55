"""Patching: torch factories, einops, optimizers and Parameter make nodes while a recorder is open."""
from __future__ import annotations

import functools
import gc
import threading
from typing import Any, Callable

import einops
import torch

from .local import current
from .proxy import recording_in

__all__ = ["install_patches", "remove_patches", "pause_gc", "resume_gc", "originals"]

_FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "zeros", "ones", "full", "empty",
              "arange", "linspace", "logspace", "eye", "tensor", "as_tensor")
_EINOPS = ("rearrange", "reduce", "repeat", "einsum", "pack", "unpack")
_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")
_PARAMETER = torch.nn.Parameter
_lock = threading.Lock()
_patched = 0  # recorders open, in all threads
_paused = 0
_gc_was_enabled = False


def _recording() -> Any:
    """This thread's open recorder, if it is recording."""
    recorder = current()
    return recorder if recorder is not None and recorder.experiment.building else None


def _factory(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        recorder = _recording()
        if recorder is None:
            return original(*args, **kwargs)
        return recorder.proxy("call_function", original, args, kwargs)
    return traced


def _on_proxies(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        recorder = recording_in((args, kwargs))
        if recorder is None:
            return original(*args, **kwargs)
        return recorder.proxy("call_function", original, args, kwargs)
    return traced


def _parameter_new(original: Callable[..., Any]) -> Callable[..., Any]:
    """Parameter.__new__ that makes a node when given a proxy (the class itself stays the same)."""
    def new(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
        recorder = recording_in(data)
        if recorder is None:
            return original(cls, data, requires_grad)
        return recorder.proxy("call_function", _PARAMETER, (data,), {"requires_grad": requires_grad})
    return staticmethod(new)


@functools.cache
def _patches() -> list[tuple[Any, str, Any, Any]]:
    """(owner, name, original, traced) for everything patched while recording; built once."""
    targets = ([(torch, name, _factory) for name in _FACTORIES]
               + [(einops, name, _on_proxies) for name in _EINOPS]
               + [(torch.optim, name, _on_proxies) for name in _OPTIMIZERS]
               + [(_PARAMETER, "__new__", _parameter_new)])
    patches = []
    for owner, name, wrap in targets:
        original = vars(owner)[name]  # raw, so a staticmethod is restored as one
        patches.append((owner, name, original, wrap(original)))
    return patches


@functools.cache
def _swaps() -> list[tuple[Callable[[dict], Any], dict, dict]]:
    """The patches grouped by owner: (what sets names on it, name -> traced, name -> original)."""
    groups: dict[int, tuple[Any, dict, dict]] = {}
    for owner, name, original, traced in _patches():
        _, to_traced, to_original = groups.setdefault(id(owner), (owner, {}, {}))
        to_traced[name], to_original[name] = traced, original
    return [(_setter(owner), to_traced, to_original) for owner, to_traced, to_original in groups.values()]


def _setter(owner: Any) -> Callable[[dict], Any]:
    """How to set names on owner: a module's namespace is a plain dict, so one `dict.update` sets them
    all (a setattr each costs more); a class takes setattr, which keeps the type's method cache right."""
    if not isinstance(owner, type):
        return vars(owner).update

    def set_on_class(values: dict) -> None:
        for name, value in values.items():
            setattr(owner, name, value)
    return set_on_class


@functools.cache
def originals() -> dict[Any, Any]:
    """traced function -> the original it stands for (the wire names the original)."""
    return {traced: original for _, _, original, traced in _patches()}


def install_patches() -> None:
    """Make factories, einops, optimizers and Parameter record while any recorder is open (in any thread).

    Undone by remove_patches when the last recorder closes: patched torch functions left in place
    confuse other libraries (transformers' weight loading re-creates buffers with them), and
    torch.jit.script / torch.compile must see the real functions outside traces.
    """
    global _patched
    with _lock:
        _patched += 1
        if _patched == 1:
            _apply(traced=True)


def remove_patches() -> None:
    """Undo install_patches once the last open recorder closes."""
    global _patched
    with _lock:
        _patched -= 1
        if _patched == 0:
            _apply(traced=False)


def _apply(traced: bool) -> None:
    """Set every patched name to its traced (or original) function."""
    for set_names, to_traced, to_original in _swaps():
        set_names(to_traced if traced else to_original)


def pause_gc() -> None:
    """No garbage collection while any trace records or runs (in any thread); undone by resume_gc.

    A trace makes thousands of short-lived objects; a collection in the middle would push them into
    older generations and trigger full collections later. Reference counting frees them at the end.
    """
    global _paused, _gc_was_enabled
    with _lock:
        _paused += 1
        if _paused == 1:
            _gc_was_enabled = gc.isenabled()
            gc.disable()


def resume_gc() -> None:
    """Undo pause_gc once the last trace is done."""
    global _paused
    with _lock:
        _paused -= 1
        if _paused == 0 and _gc_was_enabled:
            gc.enable()
