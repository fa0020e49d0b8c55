"""Cache: module outputs (and inputs) collected during a trace, keyed by envoy path (`model.` + module path)."""
from __future__ import annotations

from typing import Any

import torch

from ..tracing.walk import map_leaves

__all__ = ["Cache", "Entry", "put", "aliases_of", "resolve", "key_of", "entries_of", "from_entries"]


class Entry:
    """What one module produced: `.output`, and `.inputs`/`.input` when inputs were cached."""

    __slots__ = ("output", "inputs")

    def __init__(self, output: Any = None, inputs: Any = None) -> None:
        self.output, self.inputs = output, inputs

    @property
    def input(self) -> Any:
        """The first positional (or else first keyword) input; None where inputs were not cached."""
        if self.inputs is None:
            return None
        args, kwargs = self.inputs
        return args[0] if args else next(iter(kwargs.values()))

    def __repr__(self) -> str:
        return f"Entry(output={_describe(self.output)}, inputs={_describe(self.inputs)})"


class Cache(dict):
    """Entries keyed as nnsight keys them, by envoy path from the root `model` (`cache["model.model.layers.0"]`),
    also by attribute (`cache.model.model.layers[0]`).

    Lookups also take the path below the root (`cache["model.layers.0"]`) and renamed aliases (`cache["layers.0"]`).
    A module that ran once has an Entry; one that ran more often (generation steps) a list, one Entry per call.
    Values are stored detached, as `dtype`, on `device` (None: as they are).
    """

    def __init__(self, paths: tuple[str, ...] = (), aliases: tuple[tuple[str, str], ...] = (),
                 device: str | None = None, dtype: torch.dtype | None = None, detach: bool = True) -> None:
        super().__init__()
        self.paths = frozenset(paths)  # every module path of the model, to tell typos from modules not cached
        self.aliases = tuple(aliases)
        self.device, self.dtype, self.detach = device, dtype, detach

    def __getattr__(self, name: str) -> Any:
        return _Path(self, name)

    def __getitem__(self, path: str) -> Entry | list[Entry]:
        return super().__getitem__(self.key(path))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and super().__contains__(self.key(path))

    def get(self, path: str, default: Any = None) -> Any:
        return super().get(self.key(path), default)

    def keys(self, alias: bool = False) -> Any:
        """The keys; with alias=True, as the renamed model spells them (nnsight's `keys(alias=True)`)."""
        if not alias:
            return super().keys()
        return [key_of(_renamed(self.original(key), self.aliases)) for key in self]

    def key(self, path: str) -> str:
        """The key of a module path as spelled (with or without the root `model`, by alias)."""
        if super().__contains__(path):
            return path
        return key_of(self.original(path))

    def original(self, path: str) -> str:
        """The original module path (below the root, "" for the root) of a path as spelled."""
        return resolve(path, self.paths or {_below_root(key) for key in self}, self.aliases)

    def stored(self, value: Any) -> Any:
        """value as the cache keeps it (detached, converted, moved)."""
        return map_leaves(value, self._tensor)

    def _tensor(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if self.detach:
            value = value.detach()
        if self.dtype is not None and value.is_floating_point():
            value = value.to(self.dtype)
        return value if self.device is None else value.to(self.device)


class _Path:
    """A partial module path into a cache: `cache.model.layers[0].output` (resolved as a whole, as it is spelled)."""

    def __init__(self, cache: Cache, spelled: str) -> None:
        self._cache, self._spelled = cache, spelled
        self._path = path = cache.key(spelled)
        if not _holds(set(cache), path):  # as nnsight, only what the cache holds is reachable by attribute
            modules = {key_of(p) for p in cache.paths}
            why = f"Module '{path}' was not cached" if _holds(modules, path) else f"The model has no module '{spelled}'"
            raise AttributeError(f"{why}; cached modules: {sorted(cache)[:8]}{' ...' if len(cache) > 8 else ''}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("output", "inputs", "input"):
            return getattr(self._entry(), name)
        return self._child(name)

    def _entry(self) -> Entry:
        """The one Entry of this path's module (as nnsight, a module that ran more often has a list: index it)."""
        entry = self._cache.get(self._path)
        if entry is None:
            raise KeyError(f"Module '{self._path}' was not cached (or did not run).")
        if isinstance(entry, list):
            raise AttributeError(f"Module '{self._path}' ran {len(entry)} times, so its cache entry is a list "
                                 f"of Entries: index it first, e.g. cache['{self._path}'][0].output.")
        return entry

    def __getitem__(self, index: int) -> _Path:
        try:
            return self._child(str(index))
        except AttributeError as error:  # as nnsight: past the end of a module list is an IndexError
            if not any(key.startswith(f"{self._path}.") and key[len(self._path) + 1:].split(".")[0].isdigit()
                       for key in self._cache):
                raise KeyError(f"'{self._path}' is not a list of modules in this cache, so it has no [{index}].") from error
            raise IndexError(f"Index {index} is out of range for '{self._path}' (or it was not cached).") from error

    def _child(self, name: str) -> _Path:
        """The path one step below this one."""
        return _Path(self._cache, f"{self._spelled}.{name}")


def _holds(keys: set[str], path: str) -> bool:
    """Whether keys hold path, or modules inside it."""
    return any(key == path or key.startswith(path + ".") for key in keys) or path == "model" and bool(keys)


def put(cache: Cache, path: str, kind: str, value: Any, after: bool = True) -> None:
    """Store one module's output or inputs (path: original module path) as it fires (a graph node runs this);
    its second call makes a list. `after`: whether it fired after the point the cache was asked for."""
    if not after:
        return
    key = key_of(path)
    entries = entries_of(dict.get(cache, key))
    if not entries or getattr(entries[-1], kind) is not None:
        entries.append(Entry())
    setattr(entries[-1], kind, cache.stored(value))
    cache[key] = from_entries(entries)


def entries_of(entry: Entry | list[Entry] | None) -> list[Entry]:
    """A cache value as a list of Entries, one per call of its module."""
    return [] if entry is None else entry if isinstance(entry, list) else [entry]


def from_entries(entries: list[Entry]) -> Entry | list[Entry]:
    """What the cache holds for a module's calls: one Entry, else the list of them (nnsight's shape)."""
    return entries[0] if len(entries) == 1 else entries


def key_of(path: str) -> str:
    """nnsight's key of an original module path: its envoy path from the root `model`."""
    return f"model.{path}" if path else "model"


def _below_root(key: str) -> str:
    return key[6:] if key.startswith("model.") else ""


def _renamed(path: str, aliases: Any) -> str:
    """path with the longest original prefix that has an alias replaced by it."""
    for alias, original in sorted(aliases, key=lambda pair: -len(pair[1])):
        if path == original or path.startswith(original + "."):
            return alias + path[len(original):]
    return path


def resolve(path: str, known: Any, aliases: Any) -> str:
    """The original module path that path names: itself, by alias, or after nnsight's root `model.`; else path."""
    longest_first = sorted(aliases, key=lambda pair: -len(pair[0]))
    return next((reading for reading in _readings(path, longest_first) if reading in known), path)


def _readings(path: str, aliases: Any) -> Any:
    """path, then path with its aliases expanded, then the same without a leading root `model`."""
    yield from _expanded(path, aliases)
    if path == "model" or path.startswith("model."):
        yield from _expanded(path[6:], aliases)


def _expanded(path: str, aliases: Any) -> Any:
    """path, then what it names through each alias it starts with (in the order given, recursively)."""
    yield path
    for alias, original in aliases:
        if path == alias or path.startswith(alias + "."):
            yield from _expanded(original + path[len(alias):], aliases)


def aliases_of(root: Any) -> tuple[tuple[str, str], ...]:
    """(alias path, original path) for every alias below an envoy (see `Envoy._add_aliases`)."""
    join = lambda prefix, name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    return tuple((join(envoy._path, alias), join(envoy._path, key))
                 for envoy in root._envoys() for alias, key in envoy._aliases.items())


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{tuple(shape)}" if shape is not None else type(value).__name__
