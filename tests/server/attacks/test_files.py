"""Files: no tensor method, function or value on the wire reads or writes a file on the server."""
import pytest

from tests.server.attacks.craft import attack, node, ref, refused, post


@pytest.mark.parametrize("method", ["untyped_storage", "storage", "numpy", "tofile", "share_memory_",
                                    "data_ptr", "pin_memory", "set_", "apply_", "map_"])
def test_storage_numpy_and_memory_methods_are_refused(hosted, x, method):
    refused(post(hosted, attack(x, node("call_method", method, ref(0)))), 400, f"method '{method}'")


def test_reading_a_file_into_a_storage_is_refused(hosted, x, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 64)
    storage = node("call_method", "untyped_storage", ref(0))
    read = node("call_method", "from_file", ref(1), str(secret), False, 64, saved=True)
    refused(post(hosted, attack(x, storage, read)), 400, "method 'untyped_storage'")


def test_writing_a_module_onto_sys_path_is_refused(hosted, x, tmp_path):
    target = tmp_path / "evil.py"
    array = node("call_method", "numpy", ref(0))
    write = node("call_method", "tofile", ref(1), str(target))
    refused(post(hosted, attack(x, array, write)), 400, "method 'numpy'")
    assert not target.exists()


@pytest.mark.parametrize("target", ["torch.from_file", "torch.load", "torch.save", "torch.Tensor.numpy",
                                    "torch.Tensor.untyped_storage", "torch.UntypedStorage.from_file",
                                    "numpy.fromfile", "builtins.open"])
def test_file_functions_are_refused(hosted, x, target):
    refused(post(hosted, attack(x, node("call_function", target, "/etc/passwd"))), 400, f"'{target}'")
