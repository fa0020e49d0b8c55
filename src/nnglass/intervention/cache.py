"""Cache: module outputs (and inputs) collected during a trace, keyed by original module path."""
from __future__ import annotations

from typing import Any

import torch

from ..tracing.walk import map_leaves

__all__ = ["Cache", "Entry", "put", "aliases_of"]


class Entry:
    """What one module produced: `.output`, and `.inputs`/`.input` when inputs were cached."""

    __slots__ = ("output", "inputs")

    def __init__(self) -> None:
        self.output: Any = None
        self.inputs: Any = None

    @property
    def input(self) -> Any:
        """The first positional (or else first keyword) input."""
        args, kwargs = self.inputs
        return args[0] if args else next(iter(kwargs.values()))

    def __repr__(self) -> str:
        return f"Entry(output={_describe(self.output)}, inputs={_describe(self.inputs)})"


class Cache(dict):
    """Entries by module path (`cache["model.layers.0"]`), also by attribute (`cache.model.layers[0]`).

    Lookups also take renamed aliases (`cache["layers.0"]`) and nnsight 0.5's root name (`"model.model.layers.0"`).
    Values are stored detached, as `dtype`, on `device` (None: as they are); `stepped`: a list per module,
    one value per call (generation steps).
    """

    def __init__(self, paths: tuple[str, ...] = (), aliases: tuple[tuple[str, str], ...] = (),
                 device: str | None = None, dtype: torch.dtype | None = None, detach: bool = True,
                 stepped: bool = False) -> None:
        super().__init__()
        self.paths = frozenset(paths)  # every module path of the model, to tell typos from modules not cached
        self.aliases = sorted(aliases, key=lambda pair: -len(pair[0]))  # longest alias first
        self.device, self.dtype, self.detach, self.stepped = device, dtype, detach, stepped

    def __getattr__(self, name: str) -> Any:
        return _Path(self, name)

    def __getitem__(self, path: str) -> Entry:
        return super().__getitem__(self.resolve(path))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and super().__contains__(self.resolve(path))

    def get(self, path: str, default: Any = None) -> Any:
        return super().get(self.resolve(path), default)

    def resolve(self, path: str) -> str:
        """The original module path of a path that may use aliases or start with nnsight's root `model`."""
        known = self.paths or set(self)
        if path in known:
            return path
        for alias, original in self.aliases:
            if path == alias or path.startswith(alias + "."):
                return self.resolve(original + path[len(alias):])
        if path == "model" or path.startswith("model."):
            return self.resolve(path[6:])
        return path

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
    """A partial module path into a cache: `cache.model.layers[0].output`."""

    def __init__(self, cache: Cache, path: str) -> None:
        self._cache = cache
        self._path = path = cache.resolve(path)
        known = cache.paths or set(cache)
        if not any(p == path or p.startswith(path + ".") for p in known):
            raise AttributeError(f"The model has no module '{path}'; cached modules: {sorted(cache)[:8]}"
                                 f"{' ...' if len(cache) > 8 else ''}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        entry = self._cache.get(self._path)
        if name in ("output", "inputs", "input"):
            if entry is None:
                raise KeyError(f"Module '{self._path}' was not cached (or did not run).")
            return getattr(entry, name)
        return self._child(name)

    def __getitem__(self, index: int) -> _Path:
        return self._child(str(index))

    def _child(self, name: str) -> _Path:
        """The path one step below this one (below the root, `model`: the name itself)."""
        return _Path(self._cache, f"{self._path}.{name}" if self._path else name)


def put(cache: Cache, path: str, kind: str, value: Any) -> None:
    """Store one module's output or inputs (a graph node runs this as the module fires)."""
    entry = cache.get(path)
    if entry is None:
        entry = cache[path] = Entry()
    value = cache.stored(value)
    if cache.stepped:
        value = [*(getattr(entry, kind) or []), value]
    setattr(entry, kind, value)


def aliases_of(root: Any) -> tuple[tuple[str, str], ...]:
    """(alias path, original path) for every alias below an envoy (see `Envoy._add_aliases`)."""
    join = lambda prefix, name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    return tuple((join(envoy._path, alias), join(envoy._path, key))
                 for envoy in root._envoys() for alias, key in envoy._aliases.items())


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{tuple(shape)}" if shape is not None else type(value).__name__
