"""The one nested-value walker: containers rebuilt with their own types."""
import collections
import dataclasses

from nnglass.tracing.walk import leaves, map_leaves, zip_leaves

Point = collections.namedtuple("Point", ["x", "y"])


class Tagged(dict):
    """A dict subclass."""


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: int
    b: tuple


def test_map_rebuilds_every_container_type():
    value = {"p": Point(1, [2, 3]), "t": Tagged(k=4), "f": Frozen(5, (6,)), "s": slice(7, 8)}
    doubled = map_leaves(value, lambda v: v * 2 if isinstance(v, int) else v)
    assert doubled == {"p": Point(2, [4, 6]), "t": {"k": 8}, "f": Frozen(10, (12,)), "s": slice(14, 16)}
    assert type(doubled["p"]) is Point and type(doubled["t"]) is Tagged and type(doubled["f"]) is Frozen
    assert value["p"] == Point(1, [2, 3])  # the input is left alone


def test_model_output_is_rebuilt_with_its_fields():
    from transformers.modeling_outputs import CausalLMOutput

    out = map_leaves(CausalLMOutput(logits=1, hidden_states=(2, 3)), lambda v: v + 10)
    assert type(out) is CausalLMOutput and out.logits == 11 and out["hidden_states"] == (12, 13)


def test_leaves_in_order():
    assert list(leaves([1, (2, {"a": 3}), Point(4, 5)])) == [1, 2, 3, 4, 5]


def test_zip_leaves_pairs_matching_structure_and_keeps_the_rest():
    full = Point([1, 2], {"a": 3, "b": 4})
    part = Point([10, 20], {"a": 30})
    merged = zip_leaves(full, part, lambda f, p: (f, p))
    assert merged == Point([(1, 10), (2, 20)], {"a": (3, 30)})
    assert zip_leaves([1, 2], 5, lambda f, p: ("leaf", p)) == ("leaf", 5)  # different structure: one call
