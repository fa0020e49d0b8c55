"""Crash: no primitive that can take the server process down (sparse to dense, raw strides, storages) is reachable."""
import pytest

from tests.server.attacks.craft import attack, node, post, ref, refused, session


@pytest.mark.parametrize("target", ["torch.sparse_coo_tensor", "torch.sparse_csr_tensor", "torch.as_strided",
                                    "torch.Tensor.as_strided", "torch.Tensor.set_", "torch.empty_strided",
                                    "torch._C._crash_if_csrc_asan", "torch.Tensor.to_dense", "torch.from_numpy"])
def test_crashing_functions_are_refused(hosted, x, target):
    index = node("call_function", "torch.tensor", [[0], [10**12]])
    refused(post(hosted, session(index, node("call_function", target, ref(0), [1.0], [2, 2]))), 400, f"'{target}'")


@pytest.mark.parametrize("method", ["to_dense", "to_sparse", "as_strided", "resize_", "set_", "cuda"])
def test_crashing_and_device_methods_are_refused(hosted, x, method):
    refused(post(hosted, attack(x, node("call_method", method, ref(0), [2, 2], [10**9, 1]))), 400, f"'{method}'")


def test_device_moves_through_to_are_refused(hosted, x):
    refused(post(hosted, attack(x, node("call_method", "to", ref(0), "cuda"))), 400, "moves to other devices are not allowed")
    refused(post(hosted, attack(x, node("call_method", "to", ref(0), device="meta"))), 400, "'device'")


def test_the_server_is_still_up_after_crash_attempts(hosted, x):
    data = attack(x, node("call_method", "to", ref(0), {"$dtype": "float64"}, saved=True))
    assert post(hosted, data).status_code == 200
