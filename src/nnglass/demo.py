"""`nnglass demo`: the walkthrough's "Bigger" experiments, run on the offline SmolLM2-135M-Instruct.

Each experiment prints a heading that says what it does and why, then its result:

1. the next-token prediction for the prompt (top 5 with probabilities);
2. ablating the last layer's MLP, and how the prediction changes;
3. the ablated and the original prompt as two invokes of ONE forward pass;
4. moving the prompt's token embeddings into a placeholder prompt of the same length;
5. generating 3 tokens, reading each step's prediction with `.next()`;
6. stopping the forward pass early after layer 5, and the time that saves;
7. a logit-lens heatmap (layer x position, top token per cell) written to a PNG.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

DEFAULT_PROMPT = "The Eiffel Tower is in the city of"
DEFAULT_OUT = "nnglass-logit-lens.png"
STOP_LAYER = 5


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (0 on success)."""
    parser = argparse.ArgumentParser(
        prog="nnglass demo",
        description="Trace and edit SmolLM2-135M-Instruct: prediction, ablation, batching, moving "
                    "embeddings, generation, early stop and a logit-lens picture.")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path,
                        help=f"where to write the logit-lens PNG (default: ./{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    with _quiet_transformers():
        Demo(args.prompt, args.out).run()
    return 0


class Demo:
    """The experiments, sharing one model; each prints its heading and result."""

    def __init__(self, prompt: str, out: Path) -> None:
        self.prompt = prompt
        self.out = out

    def run(self) -> None:
        """Load the model and run every experiment in order."""
        start = time.perf_counter()
        self.load()
        baseline = self.prediction()
        self.ablation(baseline)
        self.batching()
        self.moving_embeddings()
        self.generation()
        self.early_stop()
        self.logit_lens()
        print(f"\nDone in {time.perf_counter() - start:.1f} s.")

    # -- the model ------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load SmolLM2 (the first run converts its GGUF file once; the helper prints that progress)."""
        from nnglass.models import smollm2

        print("nnglass demo: the walkthrough's \"Bigger\" experiments on SmolLM2-135M-Instruct (CPU)")
        print("Loading the model (the first run converts it once, about 20 s) ...", flush=True)
        start = time.perf_counter()
        self.model = smollm2(dispatch=True)
        self.tok = self.model.tokenizer
        self.layers = self.model._model.model.layers  # the plain torch modules, for counting hooks
        config = self.model._model.config
        self.n_tokens = len(self.tok(self.prompt)["input_ids"])
        print(f"Loaded {type(self.model._model).__name__} ({config.num_hidden_layers} layers, hidden size "
              f"{config.hidden_size}) in {time.perf_counter() - start:.1f} s.")
        print(f"Prompt: {self.prompt!r} ({self.n_tokens} tokens)")

    def decode(self, token_id: Any) -> str:
        """The text of one token id, quoted."""
        return repr(self.tok.decode(int(token_id)))

    # -- 1 ----------------------------------------------------------------------------------------------
    def prediction(self) -> torch.Tensor:
        """Read the logits of the last position: what the model predicts next."""
        heading(1, "Prediction - what does the model say next? (model.lm_head.output, last position)")
        with self.model.trace(self.prompt):
            logits = self.model.lm_head.output[0, -1].save()
        probs = logits.value.detach().softmax(-1)
        top = probs.topk(5)
        print("   top-5 next tokens: " + "  ".join(f"{self.decode(i)} {p:.1%}"
                                                    for p, i in zip(top.values.tolist(), top.indices)))
        print(f"   -> the model predicts {self.decode(top.indices[0])}.")
        return probs

    # -- 2 ----------------------------------------------------------------------------------------------
    def ablation(self, baseline: torch.Tensor) -> None:
        """Zero the last layer's MLP output and compare the prediction with the one of experiment 1."""
        heading(2, "Ablation - does the prediction rely on the last MLP? (layers[-1].mlp.output[:] = 0)")
        with self.model.trace(self.prompt):
            self.model.model.layers[-1].mlp.output[:] = 0
            logits = self.model.lm_head.output[0, -1].save()
        probs = logits.value.detach().softmax(-1)
        before, after = int(baseline.argmax()), int(probs.argmax())
        print(f"   before: {self.decode(before)} {baseline[before]:.1%}    "
              f"after: {self.decode(after)} {probs[after]:.1%}  ({self.decode(before)} now {probs[before]:.1%})")
        verdict = "changed" if before != after else "did not change"
        print(f"   -> ablated prediction: {self.decode(after)}; the prediction {verdict}.")

    # -- 3 ----------------------------------------------------------------------------------------------
    def batching(self) -> None:
        """Run the ablated prompt and its control as two invokes; count the forward calls of the model."""
        heading(3, "Batching - ablated and original prompt as two invokes of one trace: one forward pass")
        calls: list[tuple[int, ...]] = []
        hook = self.model._model.register_forward_hook(
            lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        try:
            with self.model.trace() as tracer:
                with tracer.invoke(self.prompt):
                    self.model.model.layers[-1].mlp.output[:] = 0
                    ablated = self.model.lm_head.output[0, -1].argmax().save()
                with tracer.invoke(self.prompt):
                    original = self.model.lm_head.output[0, -1].argmax().save()
        finally:
            hook.remove()
        shapes = ", ".join(f"input_ids {list(s)}" for s in calls)
        print(f"   forward calls of the model: {len(calls)} ({shapes}: batch size {calls[0][0]})")
        print(f"   invoke 1 (ablated MLP): {self.decode(ablated.value)}    "
              f"invoke 2 (original): {self.decode(original.value)}")
        print(f"   -> {'ONE forward pass' if len(calls) == 1 else f'{len(calls)} forward passes'} "
              f"computed both; each invoke saw and edited only its own batch row.")

    # -- 4 ----------------------------------------------------------------------------------------------
    def moving_embeddings(self) -> None:
        """Give a placeholder prompt the token embeddings of the real prompt (values crossing invokes)."""
        placeholder = placeholder_prompt(self.tok, self.n_tokens)
        heading(4, "Moving embeddings - the prompt's embed_tokens output replaces a placeholder's (same length)")
        with self.model.trace() as tracer:
            with tracer.invoke(self.prompt):
                embeddings = self.model.model.embed_tokens.output
            with tracer.invoke(placeholder):
                self.model.model.embed_tokens.output = embeddings
                moved = self.model.lm_head.output[0, -1].argmax().save()
            with tracer.invoke(placeholder):
                alone = self.model.lm_head.output[0, -1].argmax().save()
        shown = placeholder if isinstance(placeholder, str) else self.tok.decode(placeholder)
        print(f"   placeholder: {shown!r} ({self.n_tokens} tokens)")
        print(f"   placeholder alone: {self.decode(alone.value)}    "
              f"placeholder with the prompt's embeddings: {self.decode(moved.value)}")
        print("   -> the later layers see only the embeddings, so the placeholder predicts what the prompt does.")

    # -- 5 ----------------------------------------------------------------------------------------------
    def generation(self) -> None:
        """Generate 3 tokens; `.next()` addresses lm_head's call at each generation step."""
        heading(5, "Generation - 3 new tokens; model.lm_head.next().output is the next step's prediction")
        with self.model.generate(self.prompt, max_new_tokens=3, do_sample=False):
            steps = [self.model.lm_head.output[0, -1].argmax().save()]
            steps += [self.model.lm_head.next().output[0, -1].argmax().save() for _ in range(2)]
            output = self.model.generator.output.save()
        print("   " + "    ".join(f"step {i}: {self.decode(s.value)}" for i, s in enumerate(steps, 1)))
        print(f"   full text: {self.tok.batch_decode(output.value)[0]!r}")

    # -- 6 ----------------------------------------------------------------------------------------------
    def early_stop(self) -> None:
        """Save layer 5's output and stop: count the decoder layers that ran and time both runs."""
        n_layers = len(self.layers)
        heading(6, f"Early stop - save layer {STOP_LAYER}'s output, then tracer.stop(): the later layers never run")
        ran: list[int] = []
        hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in
                 enumerate(self.layers)]
        try:
            with self.model.trace(self.prompt) as tracer:
                hidden = self.model.model.layers[STOP_LAYER].output.save()
                tracer.stop()
        finally:
            for hook in hooks:
                hook.remove()
        print(f"   saved layer {STOP_LAYER} output, shape {tuple(hidden.value.shape)}; decoder layers that ran: "
              f"{len(ran)} of {n_layers} ({min(ran)}-{max(ran)})")

        def full() -> None:
            with self.model.trace(self.prompt):
                self.model.model.layers[STOP_LAYER].output.save()

        def stopped() -> None:
            with self.model.trace(self.prompt) as tracer:
                self.model.model.layers[STOP_LAYER].output.save()
                tracer.stop()

        t_full, t_stop = best_time(full), best_time(stopped)
        print(f"   time (best of 5): full pass {t_full * 1e3:.0f} ms, stopped {t_stop * 1e3:.0f} ms -> "
              f"{t_full - t_stop:.3f} s saved ({1 - t_stop / t_full:.0%})")

    # -- 7 ----------------------------------------------------------------------------------------------
    def logit_lens(self) -> None:
        """Decode every layer's residual stream with the final norm and lm_head; draw the top tokens."""
        from nnglass.analysis import logit_lens
        from nnglass.modeling.standard import StandardizedTransformer

        heading(7, "Logit lens - decode every layer with the final norm + lm_head: where does the answer appear?")
        # The same loaded weights and tokenizer under the standard names (embed_tokens, layers, ln_final, ...).
        model = StandardizedTransformer(self.model._model, tokenizer=self.tok)
        result = logit_lens(model, self.prompt)
        last = [row[-1] for row in result.tokens]  # the top token of every layer at the last position
        probs = result.probs[:, -1].tolist()
        shown = sorted({*range(0, len(last), 5), len(last) - 1})
        print("   last position, top token by layer: " + "  ".join(f"{i}:{last[i]!r}" for i in shown))
        final = last[-1]
        settled = next(i for i in range(len(last)) if all(t == final for t in last[i:]))
        print(f"   -> {final!r} is the top token from layer {settled} on (p = {probs[settled]:.0%} there, "
              f"{probs[-1]:.0%} at the last layer)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        result.plot(self.out)
        print(f"   wrote {self.out} (rows: layers, columns: prompt tokens, cell: top token, colour: its "
              f"probability)")


# -- helpers ------------------------------------------------------------------------------------------------
def heading(number: int, text: str) -> None:
    """Print an experiment's heading."""
    print(f"\n{number}. {text}")


def placeholder_prompt(tok: Any, n_tokens: int) -> str | list[int]:
    """A prompt of "_" tokens with exactly n_tokens tokens (token ids if no such text exists)."""
    text = "_" + " _" * (n_tokens - 1)
    for _ in range(2 * n_tokens):
        count = len(tok(text)["input_ids"])
        if count == n_tokens:
            return text
        text = text + " _" if count < n_tokens else text[:-2]
        if not text:
            break
    return tok("_")["input_ids"][-1:] * n_tokens


def best_time(fn: Any, repeats: int = 5) -> float:
    """The shortest wall time of repeats calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bar ("Loading weights") while the demo runs."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
