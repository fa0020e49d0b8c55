"""Cache: module outputs (and inputs) collected during a trace, keyed by original module path."""
from __future__ import annotations

from typing import Any

__all__ = ["Cache", "Entry", "put"]


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
    """Entries by module path (`cache["model.layers.0"]`), also by attribute (`cache.model.layers[0]`)."""

    def __init__(self, paths: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.paths = frozenset(paths)  # every module path of the model, to tell typos from modules not cached

    def __getattr__(self, name: str) -> Any:
        return _Path(self, name)


class _Path:
    """A partial module path into a cache: `cache.model.layers[0].output`."""

    def __init__(self, cache: Cache, path: str) -> None:
        self._cache = cache
        self._path = path
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
        return _Path(self._cache, f"{self._path}.{name}")

    def __getitem__(self, index: int) -> _Path:
        return _Path(self._cache, f"{self._path}.{index}")


def put(cache: Cache, path: str, kind: str, value: Any) -> None:
    """Store one module's output or inputs (a graph node runs this as the module fires)."""
    entry = cache.get(path)
    if entry is None:
        entry = cache[path] = Entry()
    setattr(entry, kind, value)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{tuple(shape)}" if shape is not None else type(value).__name__
