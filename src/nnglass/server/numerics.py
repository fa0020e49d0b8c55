"""Numerics: MKL's strict mode, under which a row's matrix products do not depend on the other rows.

With it, a job run in a batch with others gets bit-identical values on the CPU (measured: any batch size,
SmolLM2 logits of a prompt alone equal to the same prompt among others of its length). Without it MKL
picks kernels by the batch size and the last bits differ. On GPUs batched results are close, not identical.
"""
from __future__ import annotations

import os

import torch

__all__ = ["MKL_MODE", "use_strict_gemm", "gemm_batch_invariant", "agree"]

MKL_MODE = "AUTO,STRICT"  # MKL's best code path for this CPU, strict: portable to CPUs without AVX512


def use_strict_gemm() -> None:
    """Ask MKL for its strict mode (unless MKL_CBWR is set); it takes effect only before the first MKL call."""
    os.environ.setdefault("MKL_CBWR", MKL_MODE)


def gemm_batch_invariant() -> bool:
    """Whether a linear layer's first rows are the same bits alone (1 row, 9 rows) and in a batch of 72."""
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(576, 576, generator=generator), torch.randn(576, generator=generator)
    rows = torch.randn(72, 576, generator=generator)
    full = torch.nn.functional.linear(rows, weight, bias)
    return all(torch.equal(torch.nn.functional.linear(rows[:k], weight, bias), full[:k]) for k in (1, 9))


def agree(batched: torch.Tensor, alone: torch.Tensor, exact: bool) -> bool:
    """Equal shapes, and values equal bit for bit (exact: batch-invariant products) or to float32 rounding."""
    if batched.shape != alone.shape:
        return False
    return torch.equal(batched, alone) if exact else torch.allclose(batched, alone, rtol=1e-4, atol=1e-5)
