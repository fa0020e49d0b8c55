"""Loaders: a hosted model's source and where its weights go (device, dtype, device map), checked first."""
import pytest
import torch

from nnglass import LanguageModel
from nnglass.server.loading import Loader
from tests.conftest import tiny_llama

TINY = "tests.server.serving:tiny_model"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    """A tiny random Llama saved as a checkpoint directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tok, 2).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("options, message", [
    ({"dtype": "nope"}, "unknown dtype 'nope': give auto, float32, bfloat16"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"device": "gpu"}, "unknown device 'gpu': give e.g. cpu, cuda"),
    ({"device": "cpu", "device_map": "auto"}, "a device or a device map, not both"),
    ({"device_map": "everywhere"}, "device map 'everywhere': give one of auto, balanced"),
])
def test_a_bad_option_is_refused_before_anything_loads(options, message):
    with pytest.raises(ValueError, match=message):
        Loader("smollm2", **options)
    assert Loader("smollm2", dtype="bfloat16", device_map="auto").dtype == "bfloat16"  # good ones still pass


def test_a_device_map_needs_a_checkpoint():
    with pytest.raises(ValueError, match="is a function: give a device instead"):
        Loader(TINY, device_map="auto")


def test_smollm2_in_bfloat16_on_the_cpu():
    model = Loader("smollm2", device="cpu", dtype="bfloat16").load()
    assert model._remote_name == "smollm2" and model.dispatched
    assert {(p.dtype, p.device.type) for p in model._model.parameters()} == {(torch.bfloat16, "cpu")}


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_a_checkpoint_placed_by_accelerate_runs_as_loaded_plainly(checkpoint, device_map):
    placed, plain = Loader(checkpoint, device_map=device_map).load(), LanguageModel(checkpoint, dispatch=True)
    assert {p.device.type for p in placed._model.parameters()} == {"cpu"}
    assert torch.equal(placed._model(torch.tensor([[1, 2, 3]])).logits, plain._model(torch.tensor([[1, 2, 3]])).logits)


def test_a_shell_has_the_modules_and_no_weights(checkpoint):
    language, tiny = Loader(checkpoint, dtype="bfloat16").shell(), Loader(TINY).shell()
    assert not language.dispatched and language._model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.device.type for model in (language, tiny) for p in model._model.parameters()} == {"meta"}


def test_a_function_loader_places_its_model(net):
    model = Loader(TINY, device="cpu", dtype="float64").load()
    assert model._remote_name == "tiny" and model._model.layer1.weight.dtype == torch.float64
    assert torch.equal(model._model.layer1.weight, net.layer1.weight.double())
    with pytest.raises(LookupError, match="cannot import the model function 'tests.server.serving:nothing'"):
        Loader("tests.server.serving:nothing").load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it_says_so():
    with pytest.raises(RuntimeError, match="device 'cuda': this machine has no CUDA device"):
        Loader(TINY, device="cuda").load()
