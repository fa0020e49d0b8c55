"""`envoy.source`: calls inside a forward as points, against torch hooks and hand-written forwards."""
import functools

import pytest
import torch
from transformers.models.llama import modeling_llama

from nnglass import LanguageModel
from nnglass.intervention import source
from nnglass.intervention.skips import SkippedModuleError
from nnglass.tracing.errors import TraceError
from tests.conftest import tiny_gpt2, tiny_llama


@pytest.fixture
def lm(smol_tokenizer):
    return LanguageModel(tiny_llama(smol_tokenizer, 2), tokenizer=smol_tokenizer)


def _recorded(module, kind="output"):
    """A torch hook that keeps what module sees (the reference the points are checked against)."""
    seen = []
    if kind == "output":
        handle = module.register_forward_hook(lambda m, a, o: seen.append(o))
    else:
        handle = module.register_forward_pre_hook(lambda m, a: seen.append(a))
    return seen, handle


def test_print_lists_points_next_to_the_forward_lines(lm):
    attention = str(lm.model.layers[0].self_attn.source)
    for name in ("self_q_proj_0", "apply_rotary_pos_emb_0", "attention_interface_0", "self_o_proj_0"):
        assert any(line.lstrip().startswith(f"{name} ->") for line in attention.splitlines())
    assert "self.q_proj(hidden_states)" in attention
    mlp = str(lm.model.layers[0].mlp.source).splitlines()
    assert [line.split()[0] for line in mlp if "->" in line] == [
        "self_gate_proj_0", "self_act_fn_0", "self_up_proj_0", "mul_0", "self_down_proj_0"]
    assert {"self_gate_proj_0", "mul_0"} <= set(dir(lm.model.layers[0].mlp.source))


def test_attention_points_read_what_the_calls_see(lm):
    attn = lm.model.layers[0].self_attn
    rotary, handle = _recorded(attn._module.o_proj, "inputs")
    try:
        with lm.trace("The Eiffel Tower is in"):
            q = attn.source.self_q_proj_0.output.save()
            q_module = attn.q_proj.output.save()
            rope_in = attn.source.apply_rotary_pos_emb_0.inputs.save()
            rope = attn.source.apply_rotary_pos_emb_0.output.save()
            inner = attn.source.attention_interface_0.output.save()
            o_in = attn.source.self_o_proj_0.input.save()
            shape = attn.source.self_q_proj_0.output.shape
    finally:
        handle.remove()
    assert torch.equal(q, q_module) and shape == q.shape
    args, _ = rope_in.value
    expected = modeling_llama.apply_rotary_pos_emb(*args)
    assert all(torch.equal(a, b) for a, b in zip(rope.value, expected))
    assert inner.value[0].shape[-1] == attn._module.head_dim
    assert torch.equal(o_in, rotary[0][0])


def test_mlp_product_and_activation_read_and_assign(lm):
    mlp = lm.model.layers[1].mlp
    module = mlp._module
    with lm.trace("Hello world"):
        x = mlp.input.save()
        act = mlp.source.self_act_fn_0.output.save()
        product = mlp.source.mul_0.output.save()
    assert torch.allclose(act, module.act_fn(module.gate_proj(x)))
    assert torch.allclose(product, act * module.up_proj(x))
    with lm.trace("Hello world"):
        mlp.source.mul_0.output = torch.zeros_like(mlp.source.mul_0.output)
        down_in = mlp.down_proj.input.save()
        out = mlp.output.save()
    assert torch.count_nonzero(down_in) == 0 and torch.count_nonzero(out) == 0


def test_input_assignment_changes_the_call(lm):
    attn = lm.model.layers[0].self_attn
    with lm.trace("Hello world"):
        attn.source.self_o_proj_0.input = torch.zeros_like(attn.source.self_o_proj_0.input)
        out = attn.output[0].save()
    assert torch.count_nonzero(out) == 0  # Llama's o_proj has no bias


def test_two_invokes_of_different_lengths_are_narrowed(lm):
    mlp = lm.model.layers[0].mlp
    with lm.trace() as tracer:
        with tracer.invoke("Hello"):
            first = mlp.source.mul_0.output.save()
            first_module = mlp.down_proj.input.save()
            logits_a = lm.lm_head.output.save()
        with tracer.invoke("The Eiffel Tower is in the city of"):
            mlp.source.mul_0.output[:] = 0
            second = mlp.down_proj.input.save()
    assert first.shape[0] == 1 and torch.equal(first, first_module) and torch.count_nonzero(first)
    assert second.shape[0] == 1 and torch.count_nonzero(second) == 0
    with lm.trace() as tracer:
        with tracer.invoke("Hello"):
            alone = lm.lm_head.output.save()
        with tracer.invoke("The Eiffel Tower is in the city of"):
            pass
    assert torch.allclose(logits_a, alone)


def test_next_addresses_generation_steps(lm):
    q = lm.model.layers[0].self_attn.source.self_q_proj_0
    with lm.generate("Hello world", max_new_tokens=3):
        steps = [q.output.save(), q.next().output.save(), q.next().output.save()]
    lengths = [s.shape[1] for s in steps]
    assert lengths[1:] == [1, 1] and lengths[0] > 1


def test_early_stop_inside_a_forward_stops_the_model(lm):
    attn = lm.model.layers[0].self_attn
    seen, handle = _recorded(attn._module.o_proj)
    try:
        with lm.trace("Hello world"):
            q = attn.source.self_q_proj_0.output.save()
            attn.source.self_q_proj_0.output.stop()
    finally:
        handle.remove()
    assert q.shape[1] == 2 and seen == []


def test_nested_source_of_called_functions(lm):
    attn = lm.model.layers[0].self_attn
    rope = attn.source.apply_rotary_pos_emb_0
    assert "rotate_half_0" in str(rope.source)
    with lm.trace("Hello world"):
        q_embed = rope.source.add_0.output.save()
        rotated = rope.output[0].save()
        interface = attn.source.attention_interface_0
        inner = interface.source.torch_nn_functional_scaled_dot_product_attention_0.output.save()
        result = interface.output[0].save()
    assert torch.equal(q_embed, rotated)
    assert torch.allclose(inner.transpose(1, 2), result)


def test_plain_calls_run_the_original_forward_and_the_rewrite_is_cached(lm):
    attn = lm.model.layers[0].self_attn
    with lm.trace("Hello world"):
        attn.source.self_q_proj_0.output.save()
    misses = source.rewrite.cache_info().misses
    assert "forward" not in attn._module.__dict__
    with lm.trace("Hello world"):
        attn.source.self_q_proj_0.output.save()
    assert source.rewrite.cache_info().misses == misses  # the class's rewrite is reused
    with pytest.raises(ValueError), lm.trace("Hello world"):
        attn.source.self_q_proj_0.output.save()
        raise ValueError("user error")
    assert "forward" not in attn._module.__dict__
    other = lm.model.layers[1].self_attn
    with lm.trace("Hello world"):
        other.source.self_q_proj_0.output.save()
    assert source.rewrite.cache_info().misses == misses  # another instance of the class: same rewrite


def test_ensure_makes_points_only_for_calls_the_forward_makes(net):
    modules = dict(net.named_modules())
    source.ensure(modules, "layer1.source.F_linear_0")
    assert isinstance(modules["layer1.source.F_linear_0"], source.OperationPoint)
    deep = "layer1.source.F_linear_0" + ".source.x_0" * 5000
    for path in ("layer1.source.F_linear_9", "layer9.source.F_linear_0", "layer1.source", "layer1.source.x.y",
                 "source.", "source.x_0", "layer1.source.F_linear_0.source.x_0", deep):
        source.ensure(modules, path)
        assert path not in modules


def test_an_unknown_point_names_the_operations(lm):
    with pytest.raises(AttributeError, match="self_q_proj_0"):
        lm.model.layers[0].self_attn.source.q_proj_0


class _Scaled(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2 + torch.relu(x).sum()


def _scaled_by_hand(module, x):
    """_Scaled.forward written out, with its product set to zero."""
    return torch.nn.functional.linear(x, module.weight, module.bias) * 0 + torch.relu(x).sum()


def test_a_forward_with_super_and_shapes_after_an_earlier_scan():
    from nnglass import NNsight
    torch.manual_seed(0)
    model = NNsight(torch.nn.Sequential(_Scaled(3, 4)))
    x = torch.randn(2, 3)
    with model.trace(x):
        model[0].output.shape  # an earlier scan of the same input, before any point existed
    with model.trace(x):
        inner = model[0].source.forward_0
        assert inner.output.shape == (2, 4)
        model[0].source.mul_0.output = model[0].source.mul_0.output * 0
        out = model.output.save()
    assert torch.allclose(out, _scaled_by_hand(model._model[0], x))
    assert torch.allclose(model._model[0](x), model._model[0].forward(x))


def _doubled(forward):
    @functools.wraps(forward)
    def wrapper(self, x, **kwargs):
        kwargs.setdefault("scale", kwargs.pop("old_scale", 1.0))
        return 2 * forward(self, x, **kwargs)
    return wrapper


class _Decorated(torch.nn.Module):
    @_doubled
    def forward(self, x: "NotDefinedAnywhere", scale: float = 1.0):
        return torch.sigmoid(x) * scale


def test_the_forward_keeps_its_decorators_and_unevaluated_annotations():
    from nnglass import NNsight
    model = NNsight(_Decorated())  # the root's own forward: points at "source.<name>"
    x = torch.randn(2, 3)
    with model.trace(x, old_scale=3.0):
        inner = model.source.torch_sigmoid_0.output.save()
        out = model.output.save()
    assert torch.allclose(inner, torch.sigmoid(x)) and torch.allclose(out, 6 * torch.sigmoid(x))


def test_all_applies_an_edit_at_every_generation_step_and_gradients_flow(lm):
    mlp = lm.model.layers[0].mlp

    def generate(edit):
        with lm.generate("Hello world", max_new_tokens=3):
            edit()
            logits = lm.lm_head.all().output.save()
        return logits

    by_point = generate(lambda: mlp.source.mul_0.all().output.__setitem__(slice(None), 0))
    by_module = generate(lambda: mlp.all().output.__setitem__(slice(None), 0))  # down_proj(0) == 0
    plain = generate(lambda: None)
    assert torch.equal(by_point, by_module) and not torch.equal(by_point, plain)
    with lm.trace("Hello world"):
        grad = mlp.source.self_act_fn_0.output.grad.save()
        lm.output.logits.sum().backward()
    assert grad.shape == (1, 2, 64) and torch.count_nonzero(grad)


def test_a_module_with_points_pickles_copies_and_is_freed(smol_tokenizer):
    import copy
    import gc
    import pickle
    import weakref
    lm = LanguageModel(tiny_llama(smol_tokenizer, 1), tokenizer=smol_tokenizer)
    attn = lm.model.layers[0].self_attn
    with lm.trace("Hello world"):
        attn.source.self_q_proj_0.output.save()
    module = attn._module
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(clone.q_proj.weight, module.q_proj.weight)
    deep = copy.deepcopy(module)
    from nnglass import NNsight
    copied = NNsight(deep)
    with copied.trace(torch.randn(1, 2, 32), position_embeddings=(torch.ones(1, 2, 8), torch.zeros(1, 2, 8))):
        q = copied.source.self_q_proj_0.output.save()
    assert q.shape == (1, 2, 32)
    alive = weakref.ref(module)
    del attn, module, lm
    gc.collect()
    assert alive() is None


def test_skip_a_point_and_a_module_whose_points_are_used(lm):
    attn = lm.model.layers[0].self_attn
    with lm.trace("Hello world"):
        attn.source.self_o_proj_0.skip(torch.zeros(1, 2, 32))
        out = attn.output[0].save()
    assert torch.count_nonzero(out) == 0
    with lm.trace() as tracer:
        with tracer.invoke("Hello world"):
            q = attn.source.self_q_proj_0.output.save()
        with tracer.invoke("Hello world"):
            attn.skip((torch.zeros(1, 2, 32), None))
            logits = lm.lm_head.output.save()
    assert q.shape[1] == logits.shape[1] == 2
    assert "forward" not in attn._module.__dict__  # both forwards unwound
    with pytest.raises(SkippedModuleError, match="'model.layers.0.self_attn.source.self_q_proj_0' never runs"):
        with lm.trace("Hello world"):
            attn.source.self_q_proj_0.output.save()
            attn.skip((torch.zeros(1, 2, 32), None))



def _shifted(x):
    return torch.relu(x) + 1


class _CallsAFunctionModule(torch.nn.Module):
    """A forward calling a plain function that the kernels hub turned into a module (as transformers 5 does)."""

    def __init__(self, shifted) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.__dict__["shifted"] = shifted  # kept out of the module tree, like a global function

    def forward(self, x):
        return self.shifted(self.lin(x))


def test_the_source_of_a_function_made_module_is_the_function_and_edits_land():
    hub = pytest.importorskip("kernels")
    from nnglass import NNsight
    torch.manual_seed(0)
    net = _CallsAFunctionModule(hub.use_kernel_forward_from_hub("nnglass_test_shifted")(_shifted))
    assert isinstance(net.shifted, torch.nn.Module)
    model = NNsight(net)
    x = torch.randn(2, 3)
    point = model.source.self_shifted_0
    assert "torch_relu_0" in str(point.source)
    with model.trace(x):
        point.source.torch_relu_0.output = point.source.torch_relu_0.output * 0
        out = model.output.save()
    assert torch.equal(out, torch.ones(2, 3))
    assert torch.equal(net(x), _shifted(net.lin(x)))  # the model runs as before outside the trace


def test_source_of_a_tensor_method_call_reads_inside_torch_tensor_split(smol_tokenizer):
    gpt2 = LanguageModel(tiny_gpt2(smol_tokenizer, 1), tokenizer=smol_tokenizer)
    attn = gpt2.transformer.h[0].attn
    seen, handle = _recorded(attn._module.c_attn)
    try:
        with gpt2.trace("Hello world"):
            inner = attn.source.split_1.source.torch__VF_split_0.output.save()
            parts = attn.source.split_1.output.save()
    finally:
        handle.remove()
    expected = seen[0].split(attn._module.split_size, dim=2)
    assert len(inner) == len(parts) == 3
    for got, outer, want in zip(inner, parts, expected):
        assert torch.equal(got, want) and torch.equal(outer, want)


def test_a_nested_source_whose_call_turns_out_to_be_another_function_raises(smol_tokenizer):
    gpt2 = LanguageModel(tiny_gpt2(smol_tokenizer, 1), tokenizer=smol_tokenizer)
    point = gpt2.transformer.h[0].attn.source.split_1
    point.source  # resolved from the source: torch.Tensor.split
    point._module.nested.fn = torch.Tensor.norm  # as if the forward called another method at run time
    with pytest.raises(TraceError, match="'split_1' called Tensor.split when the model ran, not Tensor.norm"), gpt2.trace("Hello world"):
        point.output.save()
