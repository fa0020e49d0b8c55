"""Jobs in a shared forward against jobs alone: bit for bit where this CPU's matrix products are batch-invariant.

Under MKL's strict mode (tests/conftest.py) they are on the Intel CPUs measured; on others (an AMD EPYC here)
no MKL mode makes a row's product independent of the batch, and batched values equal lone ones to float rounding.
"""
import torch

from nnglass.server.numerics import agree, gemm_batch_invariant

EXACT = gemm_batch_invariant()
NOT_EXACT = "MKL's strict mode is not batch-invariant on this CPU: batched values agree to float rounding"


def same(batched: torch.Tensor, alone: torch.Tensor) -> bool:
    """Equal shapes, and values equal bit for bit (EXACT) or to float32 rounding."""
    return agree(batched, alone, EXACT)
