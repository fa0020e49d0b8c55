"""MKL's strict modes make a row's matrix products independent of the rest of the batch (in a fresh process:
the mode must be set before the first MKL call)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnglass.server.numerics import MKL_MODE
from tests.server.rounding import EXACT, NOT_EXACT

AVX512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
CHECK = "from nnglass.server.numerics import gemm_batch_invariant; print(gemm_batch_invariant())"


def invariant_in_a_process(mode: str) -> bool:
    env = {**os.environ, "MKL_CBWR": mode}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


@pytest.mark.parametrize("mode", [MKL_MODE, pytest.param("AVX512,STRICT", marks=pytest.mark.skipif(
    not AVX512, reason="this CPU has no AVX512"))])
@pytest.mark.skipif(not EXACT, reason=NOT_EXACT)
def test_strict_modes_are_batch_invariant(mode):
    assert invariant_in_a_process(mode)
