"""Attribute traversal: format strings, dunder and private names, names off the capability list."""
import os

import pytest

from tests.server.attacks.craft import attack, node, ref, refused, post

SECRET = "NNGLASS_TEST_SECRET"


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")


def test_a_format_string_cannot_walk_from_an_object_to_the_servers_globals(hosted, x):
    # an optimizer's class reaches `os` through `__init__.__globals__`; str.format would follow the path
    optimizer = node("call_function", "torch.optim.SGD", [ref(0)], lr=0.1)
    leak = node("call_method", "format", "{0.__init__.__globals__[os].environ[%s]}" % SECRET, ref(1), saved=True)
    refused(post(hosted, attack(x, optimizer, leak)), 400, "method 'format' is not allowed")


@pytest.mark.parametrize("method", ["format", "format_map", "__format__", "__reduce_ex__", "__getattribute__"])
def test_string_formatting_and_object_protocol_methods_are_refused(hosted, x, method):
    refused(post(hosted, attack(x, node("call_method", method, "{0}", ref(0)))), 400, f"method '{method}'")


@pytest.mark.parametrize("name", ["__class__", "__init__", "__globals__", "_version", "grad_fn", "data",
                                  "next_functions", "variable", "_modules", "untyped_storage"])
def test_attributes_off_the_list_are_refused(hosted, x, name):
    refused(post(hosted, attack(x, node("getattr", name, ref(0)))), 400, f"reading attribute '{name}'")


@pytest.mark.parametrize("target", ["builtins.getattr", "builtins.vars", "builtins.type", "operator.attrgetter",
                                    "operator.methodcaller", "builtins.__import__", "threading.enumerate"])
def test_reflection_functions_are_refused(hosted, x, target):
    refused(post(hosted, attack(x, node("call_function", target, ref(0), "__class__"))), 400,
            f"'{target}' is not an allowed function")


def test_setting_an_attribute_off_the_list_is_refused(hosted, x):
    refused(post(hosted, attack(x, node("setattr", "data", ref(0), 1.0))), 400, "setting attribute 'data'")


def test_no_request_reads_the_servers_environment(hosted, x):
    assert os.environ[SECRET] == "hunter2"  # the secret is there to be stolen, and nothing above returned it
