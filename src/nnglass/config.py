"""User settings for remote execution: the API key and the server, kept in a small JSON file.

The file is `~/.config/nnglass/config.json` (or the path in `$NNGLASS_CONFIG`); the environment
variables `NNGLASS_API_KEY` and `NNGLASS_HOST` override what it says.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_HOST = "http://127.0.0.1:8000"


class Config:
    """`CONFIG.set_default_api_key(key)` once; every later `remote=True` run uses it."""

    @property
    def path(self) -> Path:
        """The settings file: `$NNGLASS_CONFIG`, else `~/.config/nnglass/config.json`."""
        given = os.environ.get("NNGLASS_CONFIG")
        return Path(given).expanduser() if given else Path.home() / ".config" / "nnglass" / "config.json"

    @property
    def api_key(self) -> str | None:
        """The API key sent with remote requests (`$NNGLASS_API_KEY` first, then the file)."""
        return os.environ.get("NNGLASS_API_KEY") or self._stored().get("api_key")

    @property
    def host(self) -> str:
        """The server's base URL (`$NNGLASS_HOST` first, then the file, then the local default)."""
        return os.environ.get("NNGLASS_HOST") or self._stored().get("host") or DEFAULT_HOST

    def set_default_api_key(self, key: str) -> None:
        """Save the API key in the settings file for every later session."""
        self._store("api_key", key)

    def set_default_host(self, url: str) -> None:
        """Save the server URL (e.g. `http://127.0.0.1:8000`) in the settings file."""
        self._store("host", url.rstrip("/"))

    def _stored(self) -> dict:
        """What the settings file holds ({} when there is none)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise RuntimeError(f"cannot read the nnglass settings file {self.path}: {error}") from error

    def _store(self, key: str, value: str) -> None:
        """Write one setting, keeping the others; the file is readable by its owner only."""
        settings = {**self._stored(), key: value}
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(path.name + ".tmp")
        scratch.touch(mode=0o600)
        scratch.write_text(json.dumps(settings, indent=2) + "\n")
        scratch.replace(path)

    def __repr__(self) -> str:
        key = self.api_key
        shown = None if key is None else key[:6] + "…"
        return f"CONFIG(host={self.host!r}, api_key={shown!r}, file={str(self.path)!r})"


CONFIG = Config()
