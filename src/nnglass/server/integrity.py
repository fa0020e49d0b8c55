"""Integrity: hosted weights as loaded, and the check after every job that it left them so."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["Pristine"]


class Pristine:
    """A copy of a hosted module's parameters and buffers; `restore()` undoes whatever a job changed."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.saved = {name: tensor.detach().clone().requires_grad_(tensor.requires_grad)
                      for name, tensor in self._tensors()}
        self.marks = self._marks()

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        module = self.module
        return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]

    def _marks(self) -> list[tuple[Any, ...]]:
        """What a `.data` swap, dtype change, hook or requires_grad flip would change."""
        return [(name, id(t), t.dtype, t.device, t.shape, t.requires_grad,
                 bool(t._backward_hooks), bool(getattr(t, "_post_accumulate_grad_hooks", None)))
                for name, t in self._tensors()]

    def restore(self) -> bool:
        """Drop gradients left on the weights; put back every tensor a job changed. Whether any was."""
        for _, tensor in self._tensors():
            tensor.grad = None
        changed = self._marks() != self.marks or not self._same_values()
        if changed:
            self._put_back()
            self.marks = self._marks()
        return changed

    def _same_values(self) -> bool:
        """Whether every tensor still holds the values it was loaded with (in-place writes through `.data`
        leave no other trace: they do not bump the version counter)."""
        with torch.no_grad():
            return all(torch.equal(tensor, self.saved[name]) for name, tensor in self._tensors())

    def _put_back(self) -> None:
        """Fresh parameters and buffers from the copy (one object per shared weight, as when loaded)."""
        fresh: dict[int, torch.Tensor] = {}
        for name, old in self._tensors():
            if id(old) not in fresh:
                saved = self.saved[name]
                new = saved.detach().clone()
                is_param = isinstance(old, torch.nn.Parameter)
                fresh[id(old)] = torch.nn.Parameter(new, requires_grad=saved.requires_grad) if is_param else new
            owner, _, leaf = name.rpartition(".")
            setattr(self.module.get_submodule(owner), leaf, fresh[id(old)])
