"""SmolLM2 scenarios: traces of a real 135M-parameter language model against plain transformers calls.

Importing this module registers one scenario per spec of lm_specs.py. Each measures nnglass here
(lm_measure.py), the peer library in its own interpreter if `run.py --peer` set one (peer.py), and puts
both in one table (lm_tables.py).
"""
from __future__ import annotations

from typing import Any, Callable

from harness import Settings, Table, scenario
from lm_measure import measure_case, quiet_transformers
from lm_specs import REPS, SPECS, WARMUP
from lm_tables import lm_table
from peer import run_peer

_MODEL: list[Any] = []


def nnglass_model() -> Any:
    """SmolLM2 as an nnglass LanguageModel, loaded once per process."""
    if not _MODEL:
        from nnglass.models import smollm2
        quiet_transformers()
        _MODEL.append(smollm2(dispatch=True))
    return _MODEL[0]


def lm_settings(name: str, settings: Settings) -> Settings:
    """Fewer repetitions than the engine scenarios: a SmolLM2 forward takes about 0.1 s on this CPU."""
    return Settings(reps=min(settings.reps, REPS[name]), warmup=min(settings.warmup, WARMUP), traces=settings.traces)


def _scenario(name: str) -> Callable[[Settings], list[Table]]:
    """The registered function of scenario `name`: nnglass's measurement, then the peer's, in one table."""
    def run(settings: Settings) -> list[Table]:
        import nnglass
        from nnglass.models import smollm2_path
        lm = lm_settings(name, settings)
        ours = measure_case(name, nnglass, nnglass_model(), lm)
        return [lm_table(name, lm, ours, run_peer(name, lm, str(smollm2_path())))]
    run.__name__ = run.__qualname__ = name
    run.__doc__ = SPECS[name].title
    return run


for _name in SPECS:
    scenario(_name)(_scenario(_name))
