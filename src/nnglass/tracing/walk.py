"""Walk: the one walker over nested values (tuples, lists, dicts, their subclasses, dataclasses)."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Iterator

__all__ = ["map_leaves", "leaves", "zip_leaves"]

_PLAIN = (tuple, list, dict)


_LEAF, _SEQUENCE, _MAPPING, _SLICE, _DATACLASS = range(5)
_kinds: dict[type, int] = {}  # type -> how the walker takes its values apart (types do not change kind)


def _kind(kind: type) -> int:
    """How values of a type are taken apart: leaf, sequence, mapping, slice or dataclass (cached)."""
    found = _kinds.get(kind)
    if found is None:
        if issubclass(kind, (tuple, list)):
            found = _SEQUENCE
        elif issubclass(kind, Mapping):
            found = _MAPPING
        elif issubclass(kind, slice):
            found = _SLICE
        else:
            found = _DATACLASS if dataclasses.is_dataclass(kind) and not issubclass(kind, type) else _LEAF
        if len(_kinds) > 10_000:  # types made on the fly: keep the cache bounded
            _kinds.clear()
        _kinds[kind] = found
    return found


def _parts(value: Any, kind: int | None = None) -> list[tuple[Any, Any]] | None:
    """(key, child) pairs of a container, or None for a leaf (`kind`: its type's, when known)."""
    kind = _kind(type(value)) if kind is None else kind
    if kind == _LEAF:
        return None
    if kind == _SEQUENCE:
        return list(enumerate(value))
    if kind == _MAPPING:
        return list(value.items())
    if kind == _SLICE:
        return [("start", value.start), ("stop", value.stop), ("step", value.step)]
    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]


def _rebuild(value: Any, children: dict[Any, Any]) -> Any:
    """A container like value with its children replaced (namedtuples, ModelOutputs and dataclasses too)."""
    kind = type(value)
    if isinstance(value, tuple):
        items = [children[i] for i in range(len(value))]
        return kind(*items) if hasattr(kind, "_fields") else kind(items)
    if isinstance(value, slice):
        return slice(children["start"], children["stop"], children["step"])
    new = copy.copy(value)
    if isinstance(value, (list, Mapping)):
        for key, child in children.items():
            new[key] = child
    else:  # a dataclass, frozen or not
        for key, child in children.items():
            object.__setattr__(new, key, child)
    return new


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """value with fn applied to every leaf; containers are rebuilt with their own type."""
    kind = type(value)
    if kind is tuple or kind is list:  # the common cases first
        return kind([map_leaves(v, fn) for v in value])
    if kind is dict:
        return {k: map_leaves(v, fn) for k, v in value.items()}
    parts = _parts(value, _kind(kind))
    if parts is None:
        return fn(value)
    return _rebuild(value, {k: map_leaves(v, fn) for k, v in parts})


def leaves(value: Any) -> Iterator[Any]:
    """Every leaf of a nested value, depth first."""
    kind = type(value)
    if kind in _PLAIN:
        for child in value.values() if kind is dict else value:
            yield from leaves(child)
        return
    parts = _parts(value, _kind(kind))
    if parts is None:
        yield value
    else:
        for _, child in parts:
            yield from leaves(child)


def zip_leaves(full: Any, part: Any, fn: Callable[[Any, Any], Any]) -> Any:
    """part, with fn(full_leaf, part_leaf) at each leaf where full has the same structure."""
    full_parts, part_parts = _parts(full), _parts(part)
    if full_parts is None or part_parts is None or type(full) is not type(part):
        return fn(full, part)
    given = dict(full_parts)
    return _rebuild(part, {k: zip_leaves(given[k], v, fn) if k in given else v for k, v in part_parts})
