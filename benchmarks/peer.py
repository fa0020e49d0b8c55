"""The peer library (nnsight by default), measured in its own interpreter: the runner here and the worker there.

`run.py --peer PYTHON` sets PEER; each SmolLM2 scenario then calls run_peer, which starts this file as

    PYTHON peer.py --worker lm_save_one --library nnsight --model DIR --reps 40 --warmup 3 --out F.json

The worker imports torch, transformers, harness.py, the scenario specs and the library under test, never
nnglass, and writes its timings as JSON for lm_tables.py to put beside nnglass's.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from harness import Settings
from lm_measure import measure_case, quiet_transformers, reason
from lm_specs import SPECS

PEER_TIMEOUT_S = 900


@dataclass(frozen=True)
class Peer:
    """The peer library's interpreter (a separate virtualenv) and module name."""

    python: str
    library: str = "nnsight"


PEER: Peer | None = None  # set by run.py --peer


def run_peer(name: str, settings: Settings, model_path: str) -> dict[str, Any] | None:
    """Scenario `name` measured by the peer library in a subprocess: its JSON, {"error": why}, None without a peer."""
    if PEER is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peer.json"
        try:
            done = subprocess.run(_command(PEER, name, settings, model_path, out), capture_output=True, text=True,
                                  timeout=PEER_TIMEOUT_S, env=_environment())
        except subprocess.TimeoutExpired:
            why = f"timed out after {PEER_TIMEOUT_S} s"
        except OSError as exc:
            why = reason(exc)
        else:
            if out.exists():
                return json.loads(out.read_text())
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            why = lines[-1][:200] if lines else f"worker exited with status {done.returncode}"
    return {"library": PEER.library, "error": why}


def _command(peer: Peer, name: str, settings: Settings, model_path: str, out: Path) -> list[str]:
    """The worker's command line: the peer's interpreter running this file."""
    return [peer.python, str(Path(__file__).resolve()), "--worker", name, "--library", peer.library,
            "--model", model_path, "--reps", str(settings.reps), "--warmup", str(settings.warmup), "--out", str(out)]


def _environment() -> dict[str, str]:
    """This process's environment without PYTHONPATH, offline, with quiet tokenizers."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def peer_note(result: dict[str, Any], p: str) -> str:
    """The table note on how and with which versions the peer library ran."""
    import transformers
    same = result.get("torch") == torch.__version__ and result.get("transformers") == transformers.__version__
    return (f"{p} {result.get('version', '?')} (torch {result.get('torch', '?')}, transformers "
            f"{result.get('transformers', '?')}, {result.get('threads', '?')} thread"
            f"{'; the same versions as nnglass' if same else '; VERSIONS DIFFER from nnglass'}) ran in its own "
            "interpreter (.venv-peer) as a subprocess right after nnglass's block of this scenario: the two "
            "libraries alternate in blocks, one scenario each. Each library's overheads are paired against its own "
            "plain variants, interleaved in the same process, so drift of the machine's load between the blocks "
            f"does not enter them. {p} loads the same local checkpoint with `LanguageModel(path, dispatch=True)`.")


def _parse(argv: list[str]) -> argparse.Namespace:
    """The worker's command-line options."""
    parser = argparse.ArgumentParser(description="measure one SmolLM2 scenario with a given library")
    parser.add_argument("--worker", required=True, choices=sorted(SPECS))
    parser.add_argument("--library", default="nnsight")
    parser.add_argument("--model", required=True, help="local transformers checkpoint directory")
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def worker(argv: list[str]) -> int:
    """The peer side: load the library's LanguageModel from a local directory, measure, write JSON."""
    args = _parse(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    warnings.simplefilter("ignore")
    import transformers
    result: dict[str, Any] = {"library": args.library, "torch": torch.__version__,
                              "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    try:
        quiet_transformers()
        lib = importlib.import_module(args.library)
        result["version"] = getattr(lib, "__version__", "unknown")
        model = lib.LanguageModel(args.model, dispatch=True)
    except Exception as exc:  # noqa: BLE001
        result["error"] = reason(exc)
    else:
        result.update(measure_case(args.worker, lib, model, Settings(args.reps, args.warmup)))
    result["imported nnglass"] = "nnglass" in sys.modules
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
