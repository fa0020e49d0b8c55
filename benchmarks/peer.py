"""The peer column: the same scenario code run by the peer library (nnsight) in its own interpreter.

`run_peer` starts this file there as a worker, which imports torch, harness, scenarios and the library
under test, never nnglass, runs one scenario and writes its figures and versions as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["run_peer"]

TIMEOUT_S = 900


def run_peer(python: str, name: str, settings: Any, model_path: str, library: str = "nnsight") -> dict[str, Any]:
    """Scenario `name` measured by library in interpreter python: {"figures": ...} and versions, or {"error": why}."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peer.json"
        command = [python, str(Path(__file__).resolve()), "--worker", name, "--library", library, "--model",
                   model_path, "--settings", json.dumps(dataclasses.asdict(settings)), "--out", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=environment())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"library": library, "error": reason(exc)}
        if out.exists():
            return json.loads(out.read_text())
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"library": library, "error": lines[-1][:200] if lines else f"worker exited with {done.returncode}"}


def environment() -> dict[str, str]:
    """This process's environment without PYTHONPATH (the peer must not see nnglass), offline, quiet tokenizers."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def reason(exc: BaseException) -> str:
    """A one-line cause for a results table."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def worker(argv: list[str]) -> int:
    """The peer side: import the library, run one scenario, write its figures and versions as JSON."""
    parser = argparse.ArgumentParser(description="measure one scenario with a given library")
    for option in ("--worker", "--library", "--model", "--settings", "--out"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness
    import scenarios
    import torch
    import transformers
    harness.setup()
    warnings.simplefilter("ignore")
    result: dict[str, Any] = {"library": args.library, "torch": torch.__version__,
                              "transformers": transformers.__version__}
    try:
        lib = importlib.import_module(args.library)
        result["version"] = getattr(lib, "__version__", "unknown")
        settings = harness.Settings(**json.loads(args.settings))
        result["figures"] = scenarios.SCENARIOS[args.worker][1](lib, settings, args.model)
    except Exception as exc:  # noqa: BLE001 - a library that cannot run a scenario gets "failed" in its column
        result["error"] = reason(exc)
    result["imported nnglass"] = "nnglass" in sys.modules and args.library != "nnglass"
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
