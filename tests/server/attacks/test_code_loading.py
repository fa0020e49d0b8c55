"""Code loading: keywords to generate, the forward and the tokenizer come from a list; hub and import are out."""
import pytest

from tests.server.attacks.craft import attack, node, refused, post


@pytest.mark.parametrize("keyword", ["custom_generate", "trust_remote_code", "streamer", "stopping_criteria",
                                     "logits_processor", "assistant_model", "generation_config"])
def test_model_keywords_off_the_list_are_refused(hosted, x, keyword):
    data = attack(x)
    data["graphs"][0]["meta"]["call_kwargs"] = {"$dict": [[keyword, "/tmp/evil"]]}
    refused(post(hosted, data), 400, f"keyword argument of the traced model '{keyword}'")


def test_invoke_keywords_off_the_list_are_refused(hosted, x):
    data = attack(x)
    invoke = data["graphs"][0]["nodes"][-1]
    invoke["args"]["$tuple"][1] = {"$dict": [["trust_remote_code", True]]}
    refused(post(hosted, data), 400, "keyword argument of an invoke 'trust_remote_code'")


@pytest.mark.parametrize("target", ["torch.hub.load", "importlib.import_module", "builtins.exec", "builtins.eval",
                                    "builtins.compile", "torch.ops.load_library", "torch.jit.load"])
def test_code_loading_functions_are_refused(hosted, x, target):
    refused(post(hosted, attack(x, node("call_function", target, "os"))), 400, f"'{target}'")


def test_data_loader_worker_processes_are_refused(hosted, x):
    loader = node("call_function", "torch.utils.data.DataLoader", [1, 2, 3], num_workers=4)
    refused(post(hosted, attack(x, loader)), 400, "keyword argument of call_function 'torch.utils.data.DataLoader' "
                                                  "'num_workers'")
