"""Patching: every patched name is the real function outside recorders, a traced one inside, never left behind."""
import einops
import pytest
import torch

from nnglass.tracing import patching
from nnglass.tracing.tracer import Tracer


def current_values():
    return [vars(owner)[name] for owner, name, _, _ in patching._patches()]


def real_values():
    return [original for _, _, original, _ in patching._patches()]


class Recorder(Tracer):
    kind = "session"
    holds_traces = True


def test_every_name_is_real_outside_and_traced_inside():
    assert current_values() == real_values()
    with Recorder():
        assert current_values() == [traced for _, _, _, traced in patching._patches()]
    assert current_values() == real_values()


def test_the_patches_cover_torch_einops_optimizers_and_parameter():
    owners = {owner for owner, _, _, _ in patching._patches()}
    assert owners == {torch, einops, torch.optim, torch.nn.Parameter}


def test_nested_recorders_keep_the_patches_until_the_last_closes():
    traced = [traced for _, _, _, traced in patching._patches()]
    with Recorder():
        patching.install_patches()  # as a second recorder (another thread) opening and closing
        patching.remove_patches()
        assert current_values() == traced
    assert current_values() == real_values()


def test_no_patch_is_left_after_a_failed_enter():
    class Broken(Recorder):
        def begin(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        with Broken():
            pass
    assert current_values() == real_values()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_scripting_sees_the_real_factories_outside_traces():
    with Recorder():
        pass

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n) + torch.zeros(n)
    assert torch.equal(torch.jit.script(ones)(3), torch.ones(3))
