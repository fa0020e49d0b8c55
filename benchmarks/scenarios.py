"""The scenarios, written once for any library: each is `fn(lib, settings, model_path) -> {figure: value}`.

`lib` is the library module (nnglass here, nnsight in the peer's interpreter, see peer.py). Imports torch
and the harness, never nnglass: the same code measures both libraries.
"""
from __future__ import annotations

import collections
import gc
import importlib
import itertools
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Callable

import torch
from harness import Settings, measure, overheads, summary, times

__all__ = ["SCENARIOS", "TARGETS", "Target"]

OPS = 500        # graph operations of the chain (half multiplies, half adds)
SAVE_LAYER = 15
STOP_LAYER = 5
NEW_TOKENS = 8
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It is named after the engineer"
PROMPTS = ("Hello, my name is", "The capital of France is", "One plus one equals", "My favourite colour is",
           "Water boils at a temperature of", "The largest planet in the solar system is", "Cats like to",
           "Once upon a time there was")
SHAPE_PROMPTS = tuple("Hello" + " world" * n for n in range(3, 15))  # 12 lengths: more than the shape cache holds
Figures = dict[str, Any]
Scenario = Callable[[Any, Settings, str], Figures]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(name: str, title: str) -> Callable[[Scenario], Scenario]:
    """Register fn under name, with the title of its table."""
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (title, fn)
        return fn
    return register


# -- the walkthrough's tiny net ---------------------------------------------------------------------------
def tiny_net(lib: Any) -> tuple[Any, torch.nn.Module, torch.Tensor]:
    """The walkthrough's 5 -> 10 -> 2 net (children named layer1, layer2), wrapped by lib, and an input."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(collections.OrderedDict(layer1=torch.nn.Linear(5, 10), layer2=torch.nn.Linear(10, 2)))
    return lib.NNsight(net), net, torch.rand(1, 5)


def check(saved: Any, expected: torch.Tensor) -> None:
    """Fail the scenario where a trace computed something other than the eager code (nnglass saves a proxy)."""
    got = saved if isinstance(saved, torch.Tensor) else saved.value
    if not torch.allclose(got, expected):
        raise AssertionError(f"the trace saved {got}, the eager code gives {expected}")


@scenario("tiny", "Tiny net (5 -> 10 -> 2): what a trace adds to the plain forward")
def tiny(lib: Any, settings: Settings, model_path: str) -> Figures:
    """Empty trace, one save and one edit (`layer1.output[:, 0] = 0`, save the output) against the plain forward."""
    model, net, x = tiny_net(lib)

    def empty() -> None:
        with model.trace(x):
            pass

    def save() -> Any:
        with model.trace(x):
            hidden = model.layer1.output.save()
        return hidden

    def edit() -> Any:
        with model.trace(x):
            model.layer1.output[:, 0] = 0
            out = model.output.save()
        return out

    check(save(), net.layer1(x))
    check(edit(), net.layer2(net.layer1(x) * torch.tensor([0.0] + [1.0] * 9)))
    samples = measure({"forward": lambda: net(x), "empty trace": empty, "one save": save, "edit": edit},
                      settings.reps, settings.warmup)
    return {**times(samples), **overheads(samples, dict.fromkeys(("empty trace", "one save", "edit"), "forward"))}


@scenario("chain", f"{OPS}-op chain (`h = h * 1.0001 + 0.0`) on layer1's output of the tiny net")
def chain(lib: Any, settings: Settings, model_path: str) -> Figures:
    """Per node: (trace + ops − the same ops eager) / ops, built and run; build: from entering to the body's end."""
    model, net, x = tiny_net(lib)
    nodes: list[int] = []
    builds: list[int] = []  # ns from entering the trace to the end of its body, per call

    def eager() -> torch.Tensor:
        h = net.layer1(x)
        net.layer2(h)
        for _ in range(OPS // 2):
            h = h * 1.0001 + 0.0
        return h

    def traced() -> Any:
        start = perf_counter_ns()
        with model.trace(x) as tracer:
            h = model.layer1.output
            for _ in range(OPS // 2):
                h = h * 1.0001 + 0.0
            h = h.save()
            builds.append(perf_counter_ns() - start)
        graph = getattr(tracer, "graph", None)  # nnsight 0.5 and later record no graph
        nodes[:] = [len(graph.nodes)] if graph is not None else []
        return h

    check(traced(), eager())
    samples = measure({"eager ops": eager, "trace + ops": traced}, settings.reps, settings.warmup)
    over = overheads(samples, {"trace + ops": "eager ops"})
    per_node = {key: value / OPS for key, value in over["overhead: trace + ops µs"].items()}
    build = {key: value / OPS for key, value in summary(builds[-settings.reps:]).items()}
    return {**times(samples), **over, "overhead per node µs": per_node, "build per node µs": build,
            "graph nodes": nodes[0] if nodes else None}


# -- SmolLM2 ------------------------------------------------------------------------------------------------
_LM: dict[str, Any] = {}


def language_model(lib: Any, model_path: str) -> tuple[Any, Any, Callable[..., dict]]:
    """SmolLM2 as lib's LanguageModel (loaded once per process), its transformers model, and its tokenizer call."""
    if lib.__name__ not in _LM:
        from transformers.utils import logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        _LM[lib.__name__] = lib.LanguageModel(model_path, dispatch=True)
    model = _LM[lib.__name__]
    tok = model.tokenizer
    return model, model._module, lambda text: tok(text, return_tensors="pt", padding=isinstance(text, list))


def lm_figures(samples: dict, pairs: dict[str, str]) -> Figures:
    """Times, overheads and overheads in % of their baselines' medians."""
    over = overheads(samples, pairs)
    pct = {f"overhead: {v} %": 100 * over[f"overhead: {v} µs"]["value"] / times(samples)[f"{b} µs"]["value"]
           for v, b in pairs.items()}
    return {**times(samples), **over, **pct}


@scenario("lm_save", f"SmolLM2: a trace saving layer {SAVE_LAYER}'s output against the plain forward")
def lm_save(lib: Any, settings: Settings, model_path: str) -> Figures:
    """One save against the plain forward, tokenizer included in both."""
    model, hf, tokens = language_model(lib, model_path)

    def save() -> None:
        with model.trace(PROMPT):
            model.model.layers[SAVE_LAYER].output.save()

    samples = measure({"forward": lambda: hf(**tokens(PROMPT)), "trace, one save": save},
                      settings.lm_reps, settings.lm_warmup)
    return lm_figures(samples, {"trace, one save": "forward"})


class _Stop(Exception):
    """Raised by a plain forward hook to end the forward early."""


def _raise_stop(*_: Any) -> None:
    """A forward hook that ends the forward."""
    raise _Stop


@scenario("lm_stop", f"SmolLM2: early stop after layer {STOP_LAYER} against a plain hook that raises there")
def lm_stop(lib: Any, settings: Settings, model_path: str) -> Figures:
    """`tracer.stop()` after the layer against the same stop by a plain hook that raises; the full forward for scale."""
    model, hf, tokens = language_model(lib, model_path)

    def hook_stop() -> None:
        handle = hf.model.layers[STOP_LAYER].register_forward_hook(_raise_stop)
        try:
            hf(**tokens(PROMPT))
        except _Stop:
            pass
        finally:
            handle.remove()

    def stop() -> None:
        with model.trace(PROMPT) as tracer:
            model.model.layers[STOP_LAYER].output.save()
            tracer.stop()

    samples = measure({"forward": lambda: hf(**tokens(PROMPT)), "plain stop": hook_stop, "trace, stop": stop},
                      settings.lm_reps, settings.lm_warmup)
    return lm_figures(samples, {"trace, stop": "plain stop"})


@scenario("lm_invokes", f"SmolLM2: {len(PROMPTS)} invokes in one trace against {len(PROMPTS)} separate traces")
def lm_invokes(lib: Any, settings: Settings, model_path: str) -> Figures:
    """8 invokes against one padded batched forward; 8 traces against 8 plain forwards."""
    model, hf, tokens = language_model(lib, model_path)

    def invokes() -> None:
        with model.trace() as tracer:
            for prompt in PROMPTS:
                with tracer.invoke(prompt):
                    model.model.layers[SAVE_LAYER].output.save()

    def traces() -> None:
        for prompt in PROMPTS:
            with model.trace(prompt):
                model.model.layers[SAVE_LAYER].output.save()

    samples = measure({"batched forward": lambda: hf(**tokens(list(PROMPTS))), "8 invokes": invokes,
                       "8 forwards": lambda: [hf(**tokens(p)) for p in PROMPTS], "8 traces": traces},
                      settings.lm_reps, settings.lm_warmup)
    return lm_figures(samples, {"8 invokes": "batched forward", "8 traces": "8 forwards"})


# -- a server: jobs of several users sharing a forward ----------------------------------------------------
COUNTRIES = ("France", "Spain", "Italy", "Germany", "Japan", "China", "Egypt", "Canada")  # prompts of one length


def serve_requests(lib: Any, model: Any) -> list[bytes]:
    """One single-prompt request per country as a client sends it, saving a layer's output and the last logits."""
    serialize = importlib.import_module(f"{lib.__name__}.remote.serialize")  # a server of lib's own
    requests = []
    for country in COUNTRIES:
        tracer = lib.Tracer(model, (f"Question: what is the capital of {country}? Answer:",), {}, run=False)
        with tracer:
            model.model.layers[SAVE_LAYER].output.save()
            model.lm_head.output[:, -1].save()
        requests.append(json.dumps({**serialize.request(tracer), "model": model._remote_name}).encode())
    return requests


def finish_all(host: Any, requests: list[bytes]) -> list[bytes]:
    """Submit every request at once (from users 1, 2, ...) and wait for all the results."""
    jobs = [host.submit(body, user) for user, body in enumerate(requests, 1)]
    records = [host.jobs.find(job.job_id, user) for user, job in enumerate(jobs, 1)]
    while any(record.ended is None for record in records):
        time.sleep(0.001)
    if any(record.result is None for record in records):
        raise AssertionError(f"a job failed: {[r.statuses[-1].description for r in records if r.result is None]}")
    return [record.result for record in records]


def saved(decode: Any, result: bytes) -> list[torch.Tensor]:
    """A job's saved tensors in [graph, node] order."""
    data = json.loads(result)
    value_of = decode(data["tensors"])
    return [value_of(value) for *_, value in sorted(data["values"], key=lambda v: v[:2])]


@scenario("lm_serve", f"SmolLM2 server: {len(COUNTRIES)} concurrent one-prompt jobs, batched against one by one")
def lm_serve(lib: Any, settings: Settings, model_path: str) -> Figures:
    """8 users' jobs submitted at once to a Host (forked, as on Linux CPUs): batch size 8 (5 ms window) against 1."""
    server = importlib.import_module(f"{lib.__name__}.server.host")
    hosting = importlib.import_module(f"{lib.__name__}.server.hosting")
    limits = importlib.import_module(f"{lib.__name__}.server.limits")
    model, _, _ = language_model(lib, model_path)
    requests = serve_requests(lib, model)
    name = model._remote_name  # what the requests name it: here its checkpoint path
    batched, alone = (server.Host(hosting.InProcess({name: model}, limits.Limits(batch_size=size))) for size in (8, 1))
    try:
        decode = importlib.import_module(f"{lib.__name__}.remote.serialize").Decoder
        numerics = importlib.import_module(f"{lib.__name__}.server.numerics")
        exact = numerics.gemm_batch_invariant()
        same = lambda a, b: numerics.agree(a, b, exact)  # noqa: E731  bit for bit, or to float rounding
        for mine, theirs in zip(finish_all(batched, requests), finish_all(alone, requests)):
            if not all(same(*pair) for pair in zip(*(saved(decode, result) for result in (mine, theirs)))):
                raise AssertionError("batched jobs got other results than jobs run one by one")
        runs = batched.workers[name].runs
        samples = measure({"batched": lambda: finish_all(batched, requests),
                           "one by one": lambda: finish_all(alone, requests)}, settings.lm_reps, settings.lm_warmup)
        forwards = (batched.workers[name].runs - runs) / (settings.lm_reps + settings.lm_warmup)
    finally:
        batched.close()
        alone.close()
    figures = times(samples)
    ratio = figures["batched µs"]["value"] / figures["one by one µs"]["value"]
    return {**figures, "batched / one by one": ratio, "forwards per 8 batched jobs": forwards}


@scenario("lm_generate", f"SmolLM2: greedy generation of {NEW_TOKENS} tokens saving the logits of every step")
def lm_generate(lib: Any, settings: Settings, model_path: str) -> Figures:
    """`model.generate` saving lm_head's output at every step against plain `generate`."""
    model, hf, tokens = language_model(lib, model_path)
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": model.tokenizer.pad_token_id}

    def generate() -> None:
        if hasattr(model.lm_head, "next"):  # nnglass: address the module's next call
            with model.generate(PROMPT, **options):
                model.lm_head.output.save()
                for _ in range(NEW_TOKENS - 1):
                    model.lm_head.next().output.save()
        else:  # nnsight 0.5 and later: a loop over the tracer's iterations
            with model.generate(PROMPT, **options) as tracer:
                logits = list().save()
                for _ in tracer.iter[:NEW_TOKENS]:
                    logits.append(model.lm_head.output)

    samples = measure({"plain generate": lambda: hf.generate(**tokens(PROMPT), **options), "generate": generate},
                      settings.lm_reps, settings.lm_warmup)
    return lm_figures(samples, {"generate": "plain generate"})


@scenario("lm_shape", "SmolLM2: the first `.shape` in a trace (a new input length every repetition)")
def lm_shape(lib: Any, settings: Settings, model_path: str) -> Figures:
    """First .shape, forwards: (trace with `layers[0].output.shape` − the trace without) / the plain forward."""
    model, hf, tokens = language_model(lib, model_path)
    prompts = {name: itertools.cycle(SHAPE_PROMPTS) for name in ("forward", "trace", "trace, .shape")}

    def save() -> None:
        with model.trace(next(prompts["trace"])):
            model.model.layers[0].output.save()

    def shape() -> None:
        with model.trace(next(prompts["trace, .shape"])):
            model.model.layers[0].output.shape
            model.model.layers[0].output.save()

    samples = measure({"forward": lambda: hf(**tokens(next(prompts["forward"]))), "trace": save,
                       "trace, .shape": shape}, settings.lm_reps, settings.lm_warmup)
    figures = lm_figures(samples, {"trace, .shape": "trace"})
    forward = figures["forward µs"]["value"]
    figures["first .shape, forwards"] = {k: v / forward for k, v in figures["overhead: trace, .shape µs"].items()}
    scans = getattr(model, "_scans", None)  # nnglass's shape cache (a private attribute: no public count yet)
    if scans is not None:
        figures.update({"input lengths traced": min(len(SHAPE_PROMPTS), settings.lm_reps + settings.lm_warmup),
                        "shape cache entries": len(scans.entries), "shape cache bound": scans.size})
    return figures


# -- memory ------------------------------------------------------------------------------------------------
@scenario("memory", "Memory: traces of the tiny net, each saving layer1's output")
def memory(lib: Any, settings: Settings, model_path: str) -> Figures:
    """Growth over the traces, after 100 warm-up traces and a collection; hooks left on the net's modules."""
    model, net, x = tiny_net(lib)

    def trace() -> None:
        with model.trace(x):
            model.layer1.output.save()

    for _ in range(100):
        trace()
    before = memory_state(net)
    for _ in range(settings.traces):
        trace()
    after = memory_state(net)
    growth = {f"{key} growth": after[key] - before[key] for key in ("RSS KiB", "live tensors", "gc objects")}
    return {"traces": settings.traces, **growth, "hooks left": after["hooks"]}


def memory_state(net: torch.nn.Module) -> dict[str, int]:
    """RSS (KiB), live tensors, objects tracked by gc and hooks on the net's modules, after a collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    objects = gc.get_objects()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gc sees deprecated torch objects
        tensors = sum(1 for obj in objects if isinstance(obj, torch.Tensor))
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    return {"RSS KiB": rss, "live tensors": tensors, "gc objects": len(objects), "hooks": hooks}


# -- the server's job store ---------------------------------------------------------------------------------
@scenario("job_store", "Server: one job status kept in memory, and written through to SQLite (nnglass only)")
def job_store(lib: Any, settings: Settings, model_path: str) -> Figures:
    """A LOG status posted to a job without a store and to one whose store is a SQLite file (as `nnglass serve`)."""
    jobs, store, schema = (importlib.import_module(f"{lib.__name__}.{name}")
                           for name in ("server.jobs", "server.store", "remote.schema"))
    log = schema.JobStatus.LOG
    with tempfile.TemporaryDirectory() as folder:
        kept = jobs.JobStore(3600.0, store.Store(f"sqlite:///{folder}/jobs.db"))
        durable = kept.new(1, "tiny", {"tiny"}, None, b"{}")
        in_memory = jobs.JobRecord(1, "tiny", {"tiny"}, None)
        samples = measure({"in memory": lambda: in_memory.post(log, "a line"),
                           "SQLite": lambda: durable.post(log, "a line")}, settings.reps, settings.warmup)
        kept.store.engine.dispose()
    return {**times(samples), **overheads(samples, {"SQLite": "in memory"})}


# -- targets -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A target of the issue: a figure at most limit (a number or a figure's name), or that share of the peer's."""

    text: str
    scenario: str
    figure: str
    limit: float | str
    peer_share: bool = False


TARGETS = (
    Target(f"{OPS}-op chain: ≤ 1 µs per node, built and run", "chain", "overhead per node µs", 1.0),
    *(Target(f"tiny net, {what}: adds ≤ 1/5 of what the peer adds", "tiny", f"overhead: {what} µs", 0.2,
             peer_share=True) for what in ("empty trace", "one save", "edit")),
    Target("first `.shape` in a trace: ≤ one real forward", "lm_shape", "first .shape, forwards", 1.0),
    Target("shape cache bounded", "lm_shape", "shape cache entries", "shape cache bound"),
    Target("8 concurrent SmolLM2 jobs: batched ≥ 3x faster than one by one (ratio ≤ 0.33)", "lm_serve",
           "batched / one by one", 0.33),
)
