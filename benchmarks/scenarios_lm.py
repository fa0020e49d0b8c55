"""SmolLM2 scenarios: traces of a real 135M-parameter language model against plain transformers calls.

Every intervention is written once, as a function of the library module `lib` and its model, so that the
very same code runs on nnglass and on the peer library (nnsight, `run.py --peer PYTHON`). The peer runs in
its own interpreter: this file is also the peer's worker,

    PYTHON scenarios_lm.py --worker lm_save_one --library nnsight --model DIR --reps 40 --warmup 3 --out F.json

which imports torch, transformers, harness.py and the library under test, never nnglass, and writes its
timings as JSON for the tables here to merge. The helpers at the end build the targets table and the
overhead plot that run.py writes with the results.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns, process_time_ns
from typing import Any, Callable

import torch
from harness import (VARIANT_COLUMNS, Measurement, Settings, Table, count_calls, measure, median_us, paired,
                     quartiles_us, scenario, variant_rows)

PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It is named after the engineer"  # 20 tokens
PROMPTS = ("Hello, my name is", "The capital of France is", "One plus one equals", "My favourite colour is",
           "Water boils at a temperature of", "The largest planet in the solar system is", "Cats like to",
           "Once upon a time there was")  # 3 to 8 tokens each
LAYERS = 30
SAVE_LAYER = 15
STOP_LAYERS = (5, 15)
NEW_TOKENS = 8
WARMUP = 2  # each variant has also run once before, for its check
# Timed repetitions per scenario on full runs (a forward takes about 0.1 s here; quick runs take fewer).
REPS = {"lm_empty": 40, "lm_save_one": 80, "lm_save_all": 40, "lm_early_stop": 40, "lm_invokes": 30,
        "lm_generate": 30}
ONE_SAVE_GOAL_PCT = 1.0    # lm_save_one: overhead goal, % of the plain forward
ONE_SAVE_LIMIT_PCT = 2.0   # trace with one save: within 2 % of the plain forward
PEER_SHARE = 0.2           # nnglass overhead at most one fifth of the peer's
PER_NODE_GOAL_US = 2.0
PEER_TIMEOUT_S = 900
ATOL = 1e-4


# -- the interventions: the same code for every library -----------------------------------------------------
def empty_trace(lib: Any, model: Any, prompt: str) -> None:
    with model.trace(prompt):
        pass


def save_layer(lib: Any, model: Any, prompt: str, layer: int) -> Any:
    with model.trace(prompt):
        hidden = model.model.layers[layer].output.save()
    return hidden


def save_layers(lib: Any, model: Any, prompt: str, layers: int) -> list:
    hidden = []  # made outside the trace: nnsight 0.8 hands back only saved values assigned inside its body
    with model.trace(prompt):
        for i in range(layers):
            hidden.append(model.model.layers[i].output.save())
    return hidden


def stop_after(lib: Any, model: Any, prompt: str, layer: int) -> Any:
    with model.trace(prompt) as tracer:
        hidden = model.model.layers[layer].output.save()
        tracer.stop()
    return hidden


def invokes(lib: Any, model: Any, prompts: tuple[str, ...], layer: int) -> list:
    saved = []
    with model.trace() as tracer:
        for prompt in prompts:
            with tracer.invoke(prompt):
                saved.append(model.model.layers[layer].output.save())
    return saved


def separate_traces(lib: Any, model: Any, prompts: tuple[str, ...], layer: int) -> list:
    return [save_layer(lib, model, prompt, layer) for prompt in prompts]


def generate_saving_logits(lib: Any, model: Any, prompt: str, steps: int, pad: int) -> list:
    """Greedy generation that saves lm_head's output at every step."""
    if hasattr(model.lm_head, "next"):  # nnglass (and nnsight before 0.5): address the module's next call
        with model.generate(prompt, max_new_tokens=steps, do_sample=False, pad_token_id=pad):
            logits = [model.lm_head.output.save()] + [model.lm_head.next().output.save() for _ in range(steps - 1)]
    else:  # nnsight 0.5 and later dropped Envoy.next(): a loop over the tracer's iterations
        with model.generate(prompt, max_new_tokens=steps, do_sample=False, pad_token_id=pad) as tracer:
            logits = list().save()
            for step in tracer.iter[:steps]:
                logits.append(model.lm_head.output)
    return logits


# -- the plain transformers equivalents (tokenizer included) -------------------------------------------------
class _Stop(Exception):
    """Raised by a forward hook to end a plain forward pass early."""


def plain_forward(hf: Any, tok: Any, prompt: str | tuple[str, ...]) -> Any:
    if isinstance(prompt, tuple):
        return hf(**tok(list(prompt), return_tensors="pt", padding=True))
    return hf(**tok(prompt, return_tensors="pt"))


def plain_stop_after(hf: Any, tok: Any, prompt: str, layer: int) -> Any:
    """A forward pass ended by a hook that raises once `layer` has run: early stopping without a library."""
    seen = []

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.append(output)
        raise _Stop

    handle = hf.model.layers[layer].register_forward_hook(hook)
    try:
        hf(**tok(prompt, return_tensors="pt"))
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def plain_generate(hf: Any, tok: Any, prompt: str, steps: int, pad: int) -> Any:
    return hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=steps, do_sample=False, pad_token_id=pad)


def layer_outputs(hf: Any, tok: Any, prompt: str) -> list[torch.Tensor]:
    """Every decoder layer's output for prompt, captured with plain hooks (the reference for checks)."""
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
               for i, layer in enumerate(hf.model.layers)]
    try:
        hf(**tok(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(seen))]


# -- checks (once per variant, outside the timing) -----------------------------------------------------------
def value(saved: Any) -> Any:
    """A saved value: nnglass proxies hold it in .value, nnsight returns it as is."""
    return saved.value if hasattr(saved, "value") and not isinstance(saved, torch.Tensor) else saved


def same(saved: Any, expected: torch.Tensor) -> None:
    got = value(saved)
    got = got[0] if isinstance(got, tuple) else got
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=ATOL):
        raise AssertionError(f"saved {tuple(got.shape)} differs from the plain forward's {tuple(expected.shape)}")


def each_same(saved: list, expected: list[torch.Tensor]) -> None:
    if len(saved) != len(expected):
        raise AssertionError(f"saved {len(saved)} values, expected {len(expected)}")
    for s, e in zip(saved, expected):
        same(s, e)


def hidden_rows(saved: list) -> None:
    """An invoke's save is one row of [*, hidden] activations."""
    if len(saved) != len(PROMPTS):
        raise AssertionError(f"saved {len(saved)} values for {len(PROMPTS)} invokes")
    for s in saved:
        got = value(s)
        if got.shape[0] != 1 or got.shape[-1] != 576:
            raise AssertionError(f"an invoke saved shape {tuple(got.shape)}")


# -- the scenarios -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One SmolLM2 scenario: its variants, what each is compared with, and what the plot and targets use."""

    title: str
    variants: tuple[str, ...]
    baselines: dict[str, str]
    headlines: tuple[tuple[str, str], ...]  # (label, variant): plotted and checked against the targets
    build: Callable[[Any, Any], tuple[dict[str, Callable[[], Any]], dict[str, Callable[[Any], None]]]]
    notes: tuple[str, ...] = ()


def _parts(model: Any) -> tuple[Any, Any, int]:
    """The transformers model, the tokenizer and the pad id of a library's LanguageModel."""
    tok = model.tokenizer
    return model._module, tok, tok.pad_token_id


def _build_empty(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    return {"forward": lambda: plain_forward(hf, tok, PROMPT),
            "trace, empty": lambda: empty_trace(lib, model, PROMPT)}, {}


def _build_save_one(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)[SAVE_LAYER]
    name = f"trace, save layer {SAVE_LAYER}"
    return ({"forward": lambda: plain_forward(hf, tok, PROMPT),
             name: lambda: save_layer(lib, model, PROMPT, SAVE_LAYER)},
            {name: lambda saved: same(saved, expected)})


def _build_save_all(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)
    name = f"trace, save all {LAYERS} layers"
    return ({"forward": lambda: plain_forward(hf, tok, PROMPT),
             name: lambda: save_layers(lib, model, PROMPT, LAYERS)},
            {name: lambda saved: each_same(saved, expected)})


def _build_early_stop(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = layer_outputs(hf, tok, PROMPT)
    variants: dict[str, Callable[[], Any]] = {"forward": lambda: plain_forward(hf, tok, PROMPT)}
    checks: dict[str, Callable[[Any], None]] = {}
    for layer in STOP_LAYERS:
        plain, traced = f"forward, hook stops after layer {layer}", f"trace, stop after layer {layer}"
        variants[plain] = lambda layer=layer: plain_stop_after(hf, tok, PROMPT, layer)
        variants[traced] = lambda layer=layer: stop_after(lib, model, PROMPT, layer)
        checks[plain] = checks[traced] = lambda saved, layer=layer: same(saved, expected[layer])
    return variants, checks


def _build_invokes(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, _ = _parts(model)
    expected = [layer_outputs(hf, tok, prompt)[SAVE_LAYER] for prompt in PROMPTS]
    return ({"forward, batch of 8": lambda: plain_forward(hf, tok, PROMPTS),
             "trace, 8 invokes": lambda: invokes(lib, model, PROMPTS, SAVE_LAYER),
             "8 forwards": lambda: [plain_forward(hf, tok, prompt) for prompt in PROMPTS],
             "8 traces": lambda: separate_traces(lib, model, PROMPTS, SAVE_LAYER)},
            {"trace, 8 invokes": hidden_rows, "8 traces": lambda saved: each_same(saved, expected)})


def _build_generate(lib: Any, model: Any) -> tuple[dict, dict]:
    hf, tok, pad = _parts(model)
    generated = plain_generate(hf, tok, PROMPT, NEW_TOKENS, pad)
    new_tokens = generated[0, -NEW_TOKENS:].tolist()

    def check(saved: list) -> None:
        tokens = [value(s)[0, -1].argmax(-1).item() for s in saved]
        if tokens != new_tokens:
            raise AssertionError(f"greedy tokens from the saved logits {tokens} differ from generate's {new_tokens}")

    name = "generate, save lm_head each step"
    return ({"generate": lambda: plain_generate(hf, tok, PROMPT, NEW_TOKENS, pad),
             name: lambda: generate_saving_logits(lib, model, PROMPT, NEW_TOKENS, pad)},
            {name: check})


_ONE = f"trace, save layer {SAVE_LAYER}"
SPECS: dict[str, Spec] = {
    "lm_empty": Spec(
        "LM1. SmolLM2: empty trace vs plain forward (prompt of 20 tokens)",
        ("forward", "trace, empty"), {"trace, empty": "forward"}, (("empty trace", "trace, empty"),),
        _build_empty, ("`forward` = `hf(**tokenizer(prompt, return_tensors='pt'))`; `trace, empty` = "
                       "`with model.trace(prompt): pass`.",)),
    "lm_save_one": Spec(
        f"LM2. SmolLM2: trace saving layer {SAVE_LAYER}'s output vs plain forward",
        ("forward", _ONE), {_ONE: "forward"}, (("save one layer", _ONE),), _build_save_one,
        (f"`{_ONE}` = `with model.trace(prompt): model.model.layers[{SAVE_LAYER}].output.save()`; the saved "
         "value is checked against a plain forward hook's once, outside the timing.",
         f"Goal: overhead at most {ONE_SAVE_GOAL_PCT:g} % of the plain forward (nnsight was measured at about "
         "4 % on this model before this suite existed).")),
    "lm_save_all": Spec(
        f"LM3. SmolLM2: trace saving all {LAYERS} layers' outputs vs plain forward",
        ("forward", f"trace, save all {LAYERS} layers"), {f"trace, save all {LAYERS} layers": "forward"},
        ((f"save {LAYERS} layers", f"trace, save all {LAYERS} layers"),), _build_save_all,
        (f"`hidden.append(model.model.layers[i].output.save())` for i in range({LAYERS}), in one trace, into a "
         "list made before it: nnsight 0.8.1 fails on `hidden = [... for i in range(30)]` inside the trace "
         "(UnboundLocalError: it hands back only saved values assigned in the body), so the shared code avoids it.",)),
    "lm_early_stop": Spec(
        "LM4. SmolLM2: early stop (`tracer.stop()`) after a layer vs plain forwards",
        ("forward", *(v for layer in STOP_LAYERS for v in (f"forward, hook stops after layer {layer}",
                                                             f"trace, stop after layer {layer}"))),
        {**{f"trace, stop after layer {layer}": f"forward, hook stops after layer {layer}" for layer in STOP_LAYERS},
         **{f"forward, hook stops after layer {layer}": "forward" for layer in STOP_LAYERS}},
        ((f"stop after layer {STOP_LAYERS[0]}", f"trace, stop after layer {STOP_LAYERS[0]}"),), _build_early_stop,
        ("`trace, stop after layer L` saves layer L's output and calls `tracer.stop()`; its baseline "
         "`forward, hook stops after layer L` is a plain forward whose hook on layer L raises (early stopping "
         "without a library); the plain ones are compared with the full forward.",)),
    "lm_invokes": Spec(
        "LM5. SmolLM2: 8 prompts (3 to 8 tokens) in 8 invokes of one trace vs 8 separate traces",
        ("forward, batch of 8", "trace, 8 invokes", "8 forwards", "8 traces"),
        {"trace, 8 invokes": "forward, batch of 8", "8 traces": "8 forwards"},
        (("8 invokes, one trace", "trace, 8 invokes"), ("8 separate traces", "8 traces")), _build_invokes,
        (f"Each invoke and each trace saves layer {SAVE_LAYER}'s output. `forward, batch of 8` tokenizes the 8 "
         "prompts with left padding and runs one forward; `8 forwards` runs them one by one.",)),
    "lm_generate": Spec(
        f"LM6. SmolLM2: greedy generation of {NEW_TOKENS} tokens saving lm_head's output at every step",
        ("generate", "generate, save lm_head each step"), {"generate, save lm_head each step": "generate"},
        ((f"generate {NEW_TOKENS} tokens", "generate, save lm_head each step"),), _build_generate,
        (f"`generate` = `hf.generate(**tokenizer(prompt), max_new_tokens={NEW_TOKENS}, do_sample=False, "
         "pad_token_id=...)`; the traced variant passes the same settings to `model.generate`. nnglass saves "
         f"`model.lm_head.output` and then `model.lm_head.next().output` {NEW_TOKENS - 1} times; nnsight 0.5+ has "
         f"no `Envoy.next()`, so the same function takes its idiom there: `for step in tracer.iter[:{NEW_TOKENS}]:` "
         "appending `model.lm_head.output` to a saved list. The greedy tokens of the saved logits are checked "
         "against `generate`'s.",)),
}


# -- measuring one scenario with one library ---------------------------------------------------------------
def measure_case(name: str, lib: Any, model: Any, settings: Settings) -> dict[str, Any]:
    """Run each variant once (checked), time those that work interleaved, count their calls; JSON-ready."""
    spec = SPECS[name]
    result: dict[str, Any] = {"failed": {}, "samples": {}, "gc_ns": {}, "calls": {}}
    try:
        variants, checks = spec.build(lib, model)
    except Exception as exc:  # noqa: BLE001 - a library that cannot run a scenario gets "failed" in its column
        result["failed"] = dict.fromkeys(spec.variants, reason(exc))
        return result
    timed: dict[str, Callable[[], None]] = {}
    for variant in spec.variants:
        fn = variants[variant]
        try:
            saved = fn()
            if variant in checks:
                checks[variant](saved)
        except Exception as exc:  # noqa: BLE001
            result["failed"][variant] = reason(exc)
        else:
            timed[variant] = fn
    if timed:
        with ForwardClock(model._module) as clock:
            measured = measure({variant: clock.timing(fn) for variant, fn in timed.items()}, settings)
        result["samples"], result["gc_ns"] = measured.samples, measured.gc_ns
        result["calls"] = {variant: count_calls(fn) for variant, fn in timed.items()}
    return result


OUTSIDE = "outside the forward"  # a phase every variant reports: its time less the model's forward calls
CPU = "CPU time"  # a phase every variant reports: CPU time of the process (not advanced while others run)
PHASES = (CPU, OUTSIDE)


class ForwardClock:
    """Time spent inside the transformers model's forward calls, from a wrapper around its `forward`.

    A variant's time less this is the tokenizer, the library's setup and teardown and the generation loop:
    its difference between a trace and its plain baseline is the overhead outside the forward pass, without
    the forward pass's much larger run-to-run noise. Work that hooks do during the forward is not in it.
    A wrapper with try/finally rather than hooks: an early stop unwinds the forward with a BaseException,
    which skips even `always_call` forward hooks.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.inside = 0
        self.had: Any = None

    def __enter__(self) -> ForwardClock:
        module = self.module
        self.had = module.__dict__.get("forward")  # nnsight puts its own wrapper there
        inner = module.forward

        @functools.wraps(inner)  # inspect.signature follows __wrapped__: generate() reads forward's parameters
        def forward(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.inside += perf_counter_ns() - start

        module.forward = forward
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.had is None:
            del self.module.forward
        else:
            self.module.forward = self.had

    def timing(self, fn: Callable[[], Any]) -> Callable[[], dict[str, int]]:
        """fn as a timed variant that reports, as phases, its time outside the forward calls and its CPU time."""
        def call() -> dict[str, int]:
            self.inside = 0
            cpu = process_time_ns()
            start = perf_counter_ns()
            fn()
            end = perf_counter_ns()
            return {OUTSIDE: end - start - self.inside, CPU: process_time_ns() - cpu}
        return call


def reason(exc: BaseException) -> str:
    """A one-line cause for a results table."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def lm_settings(name: str, settings: Settings) -> Settings:
    """Fewer repetitions than the engine scenarios: a SmolLM2 forward takes about 0.1 s on this CPU."""
    return Settings(reps=min(settings.reps, REPS[name]), warmup=min(settings.warmup, WARMUP), traces=settings.traces)


_MODEL: list[Any] = []


def nnglass_model() -> Any:
    """SmolLM2 as an nnglass LanguageModel, loaded once per process."""
    if not _MODEL:
        from nnglass.models import smollm2
        _quiet_transformers()
        _MODEL.append(smollm2(dispatch=True))
    return _MODEL[0]


def _quiet_transformers() -> None:
    """No progress bars or generation-config warnings in the benchmark output."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


# -- the peer library, in its own interpreter ----------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """The peer library's interpreter (a separate virtualenv) and module name."""

    python: str
    library: str = "nnsight"


PEER: Peer | None = None  # set by run.py --peer


def run_peer(name: str, settings: Settings, model_path: str) -> dict[str, Any]:
    """Measure scenario `name` with the peer library in a subprocess; its JSON, or {"error": why}."""
    assert PEER is not None
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peer.json"
        command = [PEER.python, str(Path(__file__).resolve()), "--worker", name, "--library", PEER.library,
                   "--model", model_path, "--reps", str(settings.reps), "--warmup", str(settings.warmup),
                   "--out", str(out)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {PEER_TIMEOUT_S} s"}
        except OSError as exc:
            return {"error": reason(exc)}
        if out.exists():
            return json.loads(out.read_text())
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"error": lines[-1][:200] if lines else f"worker exited with status {done.returncode}"}


def worker(argv: list[str]) -> int:
    """The peer side: load the library's LanguageModel from a local directory, measure, write JSON."""
    parser = argparse.ArgumentParser(description="measure one SmolLM2 scenario with a given library")
    parser.add_argument("--worker", required=True, choices=sorted(SPECS))
    parser.add_argument("--library", default="nnsight")
    parser.add_argument("--model", required=True, help="local transformers checkpoint directory")
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    warnings.simplefilter("ignore")
    import transformers
    result: dict[str, Any] = {"library": args.library, "torch": torch.__version__,
                              "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    try:
        _quiet_transformers()
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


# -- tables --------------------------------------------------------------------------------------------------
@dataclass
class LMTable(Table):
    """A scenario table that also carries its headline overheads (for the plot and the targets)."""

    headlines: list[dict[str, Any]] = field(default_factory=list)


def _rows(spec: Spec, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Standard variant rows (harness.variant_rows) of one library's result, by variant, plus overhead %."""
    samples = result.get("samples", {})
    scratch = Table("", VARIANT_COLUMNS)
    pairs = {**spec.baselines, **{f"{v}: {ph}": f"{b}: {ph}" for v, b in spec.baselines.items() for ph in PHASES}}
    baselines = {v: b for v, b in pairs.items() if v in samples and b in samples}
    variant_rows(scratch, Measurement(samples, result.get("gc_ns", {})), baselines, result.get("calls", {}))
    rows = {row["variant"]: row for row in scratch.rows}
    for variant, row in rows.items():
        if variant in baselines:  # outside the forward: in % of the baseline's whole time
            whole = baselines[variant].removesuffix(f": {OUTSIDE}")
            row["overhead %"] = row["overhead µs"] / median_us(samples[whole]) * 100
    return rows


def _uncertainty(result: dict[str, Any], variant: str, baseline: str) -> float:
    """Standard error (µs) of the median paired difference variant − baseline, from its p25..p75 range.

    For n differences with interquartile range IQR: σ ≈ IQR / 1.349 and the median's standard error is
    about 1.2533 σ / √n. inf where there are no samples.
    """
    samples = result.get("samples", {})
    if variant not in samples or baseline not in samples:
        return float("inf")
    low, _, high = quartiles_us(paired(samples, variant, baseline))
    return 1.2533 * (high - low) / 1.349 / len(samples[variant]) ** 0.5


def _failure(spec: Spec, result: dict[str, Any], variant: str) -> str | None:
    """Why a library has no figures for a variant (None if it has them)."""
    if "error" in result:
        return f"failed: {result['error']}"
    if variant in result.get("failed", {}):
        return f"failed: {result['failed'][variant]}"
    base = spec.baselines.get(variant)
    if base is not None and base in result.get("failed", {}):
        return f"failed: baseline `{base}`: {result['failed'][base]}"
    return None


def lm_table(name: str, settings: Settings, ours: dict[str, Any], peer: dict[str, Any] | None) -> LMTable:
    """The scenario's table: nnglass's standard columns, overhead %, then the peer's columns if it ran."""
    spec = SPECS[name]
    p = PEER.library if PEER is not None else "peer"
    columns = [*VARIANT_COLUMNS[:7], "overhead %", *VARIANT_COLUMNS[7:]]
    if peer is not None:
        columns += [f"{p} median µs", f"{p} min µs", f"{p} max µs", f"{p} overhead µs", f"{p} overhead %",
                    f"{p} ratio", f"overhead nnglass/{p}"]
    table = LMTable(spec.title, columns)
    mine, theirs = _rows(spec, ours), _rows(spec, peer or {})
    for variant in [*spec.variants, *(f"{v}: {ph}" for ph in PHASES for v in spec.variants)]:
        phase = variant not in spec.variants
        if phase and variant not in mine and variant not in theirs:
            continue
        row = dict(mine.get(variant)
                   or {"variant": variant, "median µs": None if phase else _failure(spec, ours, variant)})
        if peer is not None:
            other = theirs.get(variant)
            if other is None:
                row[f"{p} median µs"] = None if phase else _failure(spec, peer, variant) or "failed: no figures"
            else:
                row.update({f"{p} median µs": other["median µs"], f"{p} min µs": other["min µs"],
                            f"{p} max µs": other["max µs"], f"{p} overhead µs": other.get("overhead µs"),
                            f"{p} overhead %": other.get("overhead %"), f"{p} ratio": other.get("ratio")})
                a, b = row.get("overhead µs"), other.get("overhead µs")
                if isinstance(a, float) and isinstance(b, float):
                    row[f"overhead nnglass/{p}"] = f"{a / b:.3f}" if b > 0 else "— (peer overhead ≤ 0)"
        table.add(**row)
    for label, variant in spec.headlines:
        base = spec.baselines[variant]
        table.headlines.append({
            "scenario": name, "label": label, "variant": variant, "baseline": base,
            "baseline µs": mine.get(base, {}).get("median µs"),
            "baseline CPU µs": mine.get(f"{base}: {CPU}", {}).get("median µs"),
            "ours": _figures(ours, mine, variant, base),
            "peer": None if peer is None else _figures(peer, theirs, variant, base),
            "peer name": p if peer is not None else None,
            "peer failed": None if peer is None or variant in theirs else _failure(spec, peer, variant)})
    table.notes += list(spec.notes)
    table.notes.append(f"{settings.reps} timed repetitions after {settings.warmup} warm-up rounds (a forward takes "
                       "about 0.1 s). Tokenization is inside every timed call: the plain variants call the tokenizer "
                       "and then the transformers model; overhead % = overhead µs / the baseline's median.")
    table.notes.append(f"`X: {CPU}` rows: the CPU time of the process during X (`time.process_time_ns`), which "
                       "does not advance while other processes hold the CPU: on a loaded machine its paired overhead "
                       "is far less noisy than the wall-clock one (memory-bandwidth contention still enters it); "
                       "overhead % against the baseline's CPU time.")
    table.notes.append(f"`X: {OUTSIDE}` rows: the wall time of X less the time inside the transformers model's "
                       "forward calls (a wrapper around its `forward`): tokenizer, the library's setup and teardown, "
                       "the generation loop. Their overhead is the library's cost outside the forward pass, without "
                       "the forward's run-to-run noise; work done by hooks during the forward is not in it; overhead % "
                       "against the baseline's whole wall time.")
    if name == "lm_early_stop":
        table.notes += _early_stop_notes(mine, theirs, p if peer is not None else None)
    if name == "lm_invokes":
        table.notes += _invokes_notes(mine, theirs, p if peer is not None else None)
    if peer is not None:
        table.notes.append(_peer_note(peer, p))
    return table


def _figures(result: dict[str, Any], rows: dict[str, dict], variant: str, base: str) -> dict[str, dict[str, Any]]:
    """A headline's overheads by measure (wall, CPU time, outside the forward): µs, %, p25..p75, standard error."""
    figures = {}
    for measure_, suffix in (("wall", ""), (CPU, f": {CPU}"), (OUTSIDE, f": {OUTSIDE}")):
        row = rows.get(variant + suffix, {})
        figures[measure_] = {"µs": row.get("overhead µs"), "%": row.get("overhead %"),
                             "p25..p75": row.get("overhead p25..p75 µs"),
                             "se": _uncertainty(result, variant + suffix, base + suffix)}
    return figures


def _ratio(rows: dict[str, dict], a: str, b: str) -> str:
    if a in rows and b in rows:
        return f"{rows[a]['median µs'] / rows[b]['median µs']:.3f}"
    return "—"


def _early_stop_notes(mine: dict, theirs: dict, peer: str | None) -> list[str]:
    lines = []
    for who, rows in (("nnglass", mine), (peer, theirs)):
        if who is None:
            continue
        parts = [f"stop after layer {layer} / full forward = {_ratio(rows, f'trace, stop after layer {layer}', 'forward')}"
                 for layer in STOP_LAYERS]
        lines.append(f"{who}: " + "; ".join(parts) + f" ({len(STOP_LAYERS)} of {LAYERS} layers run: "
                     + ", ".join(f"{(layer + 1) / LAYERS:.2f}" for layer in STOP_LAYERS) + " of the layers).")
    return lines


def _invokes_notes(mine: dict, theirs: dict, peer: str | None) -> list[str]:
    return [f"{who}: 8 invokes in one trace / 8 separate traces = {_ratio(rows, 'trace, 8 invokes', '8 traces')}"
            for who, rows in (("nnglass", mine), (peer, theirs)) if who is not None]


def _peer_note(peer: dict[str, Any], p: str) -> str:
    import transformers
    same = peer.get("torch") == torch.__version__ and peer.get("transformers") == transformers.__version__
    return (f"{p} {peer.get('version', '?')} (torch {peer.get('torch', '?')}, transformers "
            f"{peer.get('transformers', '?')}, {peer.get('threads', '?')} thread"
            f"{'; the same versions as nnglass' if same else '; VERSIONS DIFFER from nnglass'}) ran in its own "
            "interpreter (.venv-peer) as a subprocess right after nnglass's block of this scenario: the two "
            "libraries alternate in blocks, one scenario each. Each library's overheads are paired against its own "
            "plain variants, interleaved in the same process, so drift of the machine's load between the blocks "
            f"does not enter them. {p} loads the same local checkpoint with `LanguageModel(path, dispatch=True)`.")


def _scenario(name: str) -> Callable[[Settings], list[Table]]:
    def run(settings: Settings) -> list[Table]:
        import nnglass
        from nnglass.models import smollm2_path
        lm = lm_settings(name, settings)
        ours = measure_case(name, nnglass, nnglass_model(), lm)
        peer = run_peer(name, lm, str(smollm2_path())) if PEER is not None else None
        return [lm_table(name, lm, ours, peer)]
    run.__name__ = run.__qualname__ = name
    run.__doc__ = SPECS[name].title
    return run


for _name in SPECS:
    scenario(_name)(_scenario(_name))


# -- targets and the plot (used by run.py) -------------------------------------------------------------------
def _find(tables: list[Table], prefix: str, column: str = "quantity") -> Table | None:
    return next((t for t in tables if t.title.startswith(prefix) and column in t.columns), None)


def _verdict(low: float, high: float, limit: float) -> str | None:
    """met / not met when the whole ±2 standard-error range is on one side of the limit, else None."""
    if high <= limit:
        return "met"
    if low > limit:
        return "not met"
    return None


def _fmt(f: dict[str, Any], pct: bool = True) -> str:
    """`0.45 % (512 µs ± 140)`: an overhead with the standard error of its median."""
    se = "" if f["se"] == float("inf") else f" ± {f['se']:,.0f}"
    return (f"{f['%']:.2f} % " if pct and f["%"] is not None else "") + f"({f['µs']:,.0f} µs{se})"


def targets_table(tables: list[Table]) -> Table:
    """Met / not met for each target of the issue, with the figures behind it (not asserted).

    A verdict needs the overhead's median ± 2 standard errors on one side of the limit. The wall-clock figure
    is tried first, then the CPU-time one (steadier on a loaded machine); where neither decides, the status
    says so and gives the verdict of the low-noise part outside the forward, a lower bound of the overhead.
    """
    table = Table("Targets", ["target", "figures", "status"])
    heads = [h for t in tables for h in getattr(t, "headlines", ())]
    one = next((h for h in heads if h["scenario"] == "lm_save_one"), None)
    for limit, what in ((ONE_SAVE_GOAL_PCT, "lm_save_one goal"), (ONE_SAVE_LIMIT_PCT, "trace with one save")):
        target = f"{what}: overhead ≤ {limit:g} % of the plain forward"
        if one is None or one["ours"]["wall"]["µs"] is None:
            table.add(target=target, figures="—", status="not measured")
            continue
        f = one["ours"]
        figures = (f"wall {_fmt(f['wall'])}; CPU time {_fmt(f[CPU])}; outside the forward {_fmt(f[OUTSIDE])}; "
                   f"forward {one['baseline µs'] / 1000:,.1f} ms")
        status = None
        for key, base in (("wall", one["baseline µs"]), (CPU, one["baseline CPU µs"])):
            m = f[key]
            if m["µs"] is not None and base:
                verdict = _verdict(m["µs"] - 2 * m["se"], m["µs"] + 2 * m["se"], limit / 100 * base)
                if verdict:
                    status = f"{verdict} ({'wall' if key == 'wall' else 'CPU time'})"
                    break
        if status is None:
            o = f[OUTSIDE]["µs"]
            status = "unresolved (noise)" + ("" if o is None else "; outside the forward alone: " + (
                "met" if o <= limit / 100 * one["baseline µs"] else "not met"))
        table.add(target=target, figures=figures, status=status)
    for h in heads:
        target = f"nnglass overhead ≤ 1/{1 / PEER_SHARE:g} of the peer's: {h['label']}"
        if h["peer"] is None:
            table.add(target=target, figures="—", status="not measured (run `make bench-peer`)")
            continue
        if h["peer failed"] or h["peer"]["wall"]["µs"] is None or h["ours"]["wall"]["µs"] is None:
            table.add(target=target, figures=h["peer failed"] or "no figures", status="not measured")
            continue
        parts, status = [], None
        for key in ("wall", CPU, OUTSIDE):
            a, b = h["ours"][key], h["peer"][key]
            if a["µs"] is None or b["µs"] is None:
                continue
            share = f", share {a['µs'] / b['µs']:.2f}" if a["µs"] > 0 and b["µs"] > 0 else ""
            parts.append(f"{key}: {_fmt(a, False)} vs {_fmt(b, False)}{share}")
            if status is None and key != OUTSIDE:
                verdict = _verdict(a["µs"] - 2 * a["se"] - PEER_SHARE * (b["µs"] + 2 * b["se"]),
                                   a["µs"] + 2 * a["se"] - PEER_SHARE * (b["µs"] - 2 * b["se"]), 0.0)
                if verdict and b["µs"] - 2 * b["se"] > 0:
                    status = f"{verdict} ({'wall' if key == 'wall' else 'CPU time'})"
        if status is None:
            a, b = h["ours"][OUTSIDE]["µs"], h["peer"][OUTSIDE]["µs"]
            status = "unresolved (noise)" + ("" if a is None or b is None or b <= 0 else
                                             "; outside the forward: " + ("met" if a <= PEER_SHARE * b else "not met"))
        table.add(target=target, figures=f"nnglass vs {h['peer name']}: " + "; ".join(parts), status=status)
    stops = next((t for t in tables if t.title.startswith("LM4.")), None)
    if stops is not None:
        medians = {r["variant"]: r["median µs"] for r in stops.rows if isinstance(r.get("median µs"), float)}
        order = [f"trace, stop after layer {layer}" for layer in STOP_LAYERS] + ["forward"]
        if all(v in medians for v in order):
            grows = all(medians[a] < medians[b] for a, b in zip(order, order[1:]))
            table.add(target="early stop: cost grows with the layers executed",
                      figures=", ".join(f"{v}: {medians[v]:,.0f} µs" for v in order), status="met" if grows else "not met")
    per_node = _find(tables, "B. Per-node cost")
    row = next((r for r in per_node.rows if r["quantity"] == "overhead per node µs"), None) if per_node else None
    if row is None:
        table.add(target=f"per-node cost ≤ {PER_NODE_GOAL_US:g} µs", figures="—", status="not measured")
    else:
        marginal = next((r["value"] for r in per_node.rows if r["quantity"] == "marginal overhead per node µs"), None)
        table.add(target=f"per-node cost ≤ {PER_NODE_GOAL_US:g} µs",
                  figures=f"{row['value']:.2f} µs per node (marginal {marginal:.2f} µs)",
                  status="met" if row["value"] <= PER_NODE_GOAL_US else "not met")
    memory = _find(tables, "C. Memory", "metric")
    if memory is None:
        table.add(target="memory flat across traces", figures="—", status="not measured")
    else:
        growth = {r["metric"]: r["growth"] for r in memory.rows if r.get("before") is not None}
        table.add(target="memory flat across traces", figures=", ".join(f"{k} {v:+}" for k, v in growth.items()),
                  status="met" if max(growth.values()) <= 0 else "not met")
    table.notes.append("Targets of the issue, reported and not asserted. Overheads: medians of paired differences "
                       "against the plain transformers call ± the standard error of that median (see each table). A "
                       "verdict needs the median ± 2 standard errors on one side of the limit: by wall clock first, "
                       "then by CPU time (steadier on a loaded machine). Otherwise `unresolved`, with the verdict of "
                       "the low-noise part outside the forward (for the % targets a lower bound of the overhead; "
                       "for the peer shares a comparison of that part alone).")
    return table


def plot_overhead(tables: list[Table], path: Path) -> bool:
    """Bars per SmolLM2 headline for nnglass and the peer: overhead by wall time, CPU time and outside the forward."""
    heads = [h for t in tables for h in getattr(t, "headlines", ())]
    if not heads:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peer = next((h["peer name"] for h in heads if h["peer name"]), None)
    series = [("nnglass", "ours", "#2a7ab9")] + ([(peer, "peer", "#d9822b")] if peer else [])
    panels = (("wall", "%", 1.0, "% of the plain call", "whole call, wall clock (labels: ms; error bars: ±2 standard "
                                                         "errors of the median)"),
              (CPU, "%", 1.0, "% of the plain call", "whole call, CPU time of the process (steadier under load)"),
              (OUTSIDE, "µs", 1e-3, "ms", "outside the model's forward: tokenizer, setup, teardown, generation loop"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 11), sharex=True, layout="constrained")
    x = list(range(len(heads)))
    width = 0.8 / len(series)
    for ax, (key, unit, scale, ylabel, title) in zip(axes, panels):
        for i, (who, side, colour) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            figs = [(h[side] or {}).get(key, {}) for h in heads]
            heights = [(f.get(unit) or 0.0) * scale for f in figs]
            scale_err = scale if unit == "µs" else None
            errors = []
            for f, h in zip(figs, heads):
                se, us_ = f.get("se", float("inf")), f.get("µs")
                if se == float("inf") or not us_ or f.get(unit) is None:
                    errors.append(0.0)
                else:  # the standard error in the panel's unit: µs scaled, or % via the same ratio as the overhead
                    errors.append(2 * se * (scale_err if scale_err else f[unit] / us_))
            bars = ax.bar([v + offset for v in x], heights, width, yerr=errors, capsize=3, label=who, color=colour,
                          error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
            for bar, f, h in zip(bars, figs, heads):
                value_us = f.get("µs")
                text = ("failed" if side == "peer" and h["peer failed"] else "—") if value_us is None \
                    else f"{value_us / 1000:,.2f}"
                y = bar.get_height()
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, 0), ha="center", fontsize=7,
                            va="top" if y >= 0 else "bottom", xytext=(0, -2 if y >= 0 else 2),
                            textcoords="offset points", color="#333333")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    for ax in axes[:2]:
        ax.axhline(ONE_SAVE_GOAL_PCT, color="grey", linestyle="--", linewidth=1,
                   label=f"goal for one save: {ONE_SAVE_GOAL_PCT:g} %")
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(x, [h["label"] for h in heads], rotation=15, ha="right")
    fig.suptitle("SmolLM2-135M on CPU (1 thread): trace overhead over plain transformers calls "
                 "(labels under the bars: overhead in ms)", fontsize=11)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
