"""The `nnglass` command: keys on a temporary database, `status`, and `serve` as a real process."""
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from nnglass import LanguageModel
from nnglass.cli import _figures, _hosting, _parser, main
from nnglass.remote.schema import ModelInfo
from nnglass.models import smollm2_path
from nnglass.server import KeyStore, Limits
from tests.server.rounding import EXACT
from tests.server.serving import hosting, tiny_model


def test_keys_create_list_revoke(tmp_path, capsys):
    db = str(tmp_path / "keys.db")
    assert main(["keys", "create", "--name", "alice", "--db", db]) == 0
    assert main(["keys", "create", "--name", "bob", "--db", db]) == 0
    tokens = re.findall(r"^    (nng_\S+)$", capsys.readouterr().out, re.M)
    store = KeyStore(db)
    assert [store.check(token).name for token in tokens] == ["alice", "bob"]
    assert main(["keys", "revoke", "alice", "--db", db]) == 0
    assert main(["keys", "revoke", "2", "--db", db]) == 0
    assert capsys.readouterr().out == "revoked key 1 ('alice')\nrevoked key 2 ('bob')\n"
    assert main(["keys", "create", "--name", "alice", "--db", db]) == 0  # the name is free again
    assert main(["keys", "list", "--db", db]) == 0
    listing = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[1] for line in listing] == ["alice", "bob", "alice"]
    assert ["revoked" in line for line in listing] == [True, True, False]
    assert not store.check(tokens[0]).active and store.check("nng_unknown") is None
    assert main(["keys", "revoke", "carol", "--db", db]) == 1
    assert "no active key with id or name 'carol'" in capsys.readouterr().err


def test_status_prints_the_hosted_models(tmp_path, capsys):
    with hosting({"tiny": tiny_model()}, tmp_path) as served:
        assert main(["status", "--host", served.url]) == 0
        assert main(["status"]) == 0  # the host from nnglass.CONFIG
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{served.url}: nnglass 0.1.0, 1 model(s)" and out[1].split()[:3] == ["tiny", "Sequential", "82"]
    assert out[2:] == out[:2]


def test_status_of_an_older_server_prints_the_queue_only():
    older = ModelInfo.model_validate({"name": "tiny", "architecture": "Net", "parameters": 3, "queue": 2})
    assert _figures(older) == ""


@pytest.mark.parametrize("options, message", [
    (["--dtype", "nope"], "nnglass serve: unknown dtype 'nope'"),
    (["--device", "gpu"], "nnglass serve: unknown device 'gpu'"),
    (["--device", "cpu", "--device-map", "auto"], "nnglass serve: give a device or a device map, not both"),
    (["--replicas", "2"], "nnglass serve: --replicas needs --ray"),
    (["--ray", "auto", "--replicas", "0"], "nnglass serve: --replicas must be at least 1, not 0"),
])
def test_serve_refuses_bad_options_before_loading(options, message, capsys):
    assert main(["serve", "--model", "smollm2", *options]) == 1
    assert capsys.readouterr().err.startswith(message)


def test_serve_options_reach_the_loaded_model():
    args = _parser().parse_args(["serve", "--model", "smollm2", "--device", "cpu", "--dtype", "bfloat16"])
    hosting = _hosting(args, Limits())
    assert {p.dtype for p in hosting.models["smollm2"]._model.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama with the SmolLM2 tokenizer, saved as a checkpoint directory."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_serve_runs_a_server_process(checkpoint, tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "keys.db")
    assert main(["keys", "create", "--name", "ci", "--db", db]) == 0
    token = re.search(r"^    (nng_\S+)$", capsys.readouterr().out, re.M).group(1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if name != "MKL_CBWR"}  # serve sets it itself
    command = ["serve", "--model", checkpoint, "--port", str(port), "--db", db, "--data", str(tmp_path / "jobs"),
               "--device-map", "cpu", "--batch-size", "4", "--batch-window-ms", "2"]
    process = subprocess.Popen([sys.executable, "-m", "nnglass.cli", *command],
                               env={**env, "TOKENIZERS_PARALLELISM": "false"}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "nnglass serve did not come up"
            try:
                models = httpx.get(f"{url}/status").json()["models"]
                break
            except httpx.TransportError:
                time.sleep(0.2)
        # a local checkpoint shows only its folder's name: the server's paths are nobody's business
        assert [(m["name"], m["architecture"]) for m in models] == [(os.path.basename(checkpoint), "LlamaForCausalLM")]
        monkeypatch.setenv("NNGLASS_HOST", url)
        monkeypatch.setenv("NNGLASS_API_KEY", token)
        model = LanguageModel(checkpoint)

        def run(remote):
            with model.trace("Hello world", remote=remote):
                hidden = model.model.layers[0].output.save()
                logits = model.lm_head.output.save()
            return hidden.value, logits.value

        remote, local = run(True), run(False)
        assert all(torch.equal(a, b) for a, b in zip(remote, local))
        assert sorted(path.name for path in (tmp_path / "jobs").iterdir()) == ["requests", "results"]
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "hosting" in errors
    assert ("MKL_CBWR" in errors) is not EXACT  # a warning only where no MKL mode makes products batch-invariant
