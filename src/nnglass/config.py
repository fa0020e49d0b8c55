"""User settings for remote execution: the API key and the server, kept in a small JSON file.

The file is `~/.config/nnglass/config.json` (or the path in `$NNGLASS_CONFIG`); the environment
variables `NNGLASS_API_KEY` and `NNGLASS_HOST` override what it says. nnsight 0.4's names work too:
`CONFIG.API.HOST` / `APIKEY` / `SSL` set values for this process only (they win over the file and the
environment), and `CONFIG.APP` holds 0.4's switches.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_HOST = "http://127.0.0.1:8000"

__all__ = ["CONFIG", "Config", "ApiConfig", "AppConfig", "DEFAULT_HOST"]


class ApiConfig:
    """nnsight 0.4's `CONFIG.API`: HOST (with or without scheme), APIKEY and SSL, kept in memory."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._host: str | None = None
        self._key: str | None = None
        self._ssl: bool | None = None

    @property
    def HOST(self) -> str:
        """The server, as 0.4 writes it (`host:port`, no scheme)."""
        return self._config.host.split("://", 1)[-1]

    @HOST.setter
    def HOST(self, value: str) -> None:
        self._host = value.rstrip("/")

    @property
    def APIKEY(self) -> str | None:
        """The API key remote runs send."""
        return self._config.api_key

    @APIKEY.setter
    def APIKEY(self, value: str | None) -> None:
        self._key = value

    @property
    def SSL(self) -> bool:
        """Whether the server is reached over https."""
        return self._config.host.startswith("https://")

    @SSL.setter
    def SSL(self, value: bool) -> None:
        self._ssl = bool(value)

    def url(self) -> str | None:
        """The server URL HOST and SSL give (no scheme and SSL unset: https, as 0.4), or None if neither was set."""
        if self._host is None and self._ssl is None:
            return None
        scheme, _, place = (self._host or self._config.stored_host()).rpartition("://")
        ssl = self._ssl if self._ssl is not None else scheme != "http"
        return ("https://" if ssl else "http://") + place


class AppConfig:
    """nnsight 0.4's `CONFIG.APP` switches.

    CONTROL_FLOW_HANDLING: native `if`/`for` on proxies inside a with-block are compiled into graph
    constructs (False: they raise, as with-blocks run as written). REMOTE_LOGGING: remote status
    lines are logged (False: only LOG lines print). DEBUG and FRAME_INJECTION are accepted and have
    no effect: errors always name the user's line, and saved values always become real values.
    """

    def __init__(self) -> None:
        self.CONTROL_FLOW_HANDLING = True
        self.FRAME_INJECTION = True
        self.DEBUG = False
        self.REMOTE_LOGGING = True


class Config:
    """`CONFIG.set_default_api_key(key)` once; every later `remote=True` run uses it."""

    def __init__(self) -> None:
        self.API = ApiConfig(self)
        self.APP = AppConfig()

    @property
    def path(self) -> Path:
        """The settings file: `$NNGLASS_CONFIG`, else `~/.config/nnglass/config.json`."""
        given = os.environ.get("NNGLASS_CONFIG")
        return Path(given).expanduser() if given else Path.home() / ".config" / "nnglass" / "config.json"

    @property
    def api_key(self) -> str | None:
        """The API key sent with remote requests (`CONFIG.API.APIKEY`, `$NNGLASS_API_KEY`, then the file)."""
        return self.API._key or os.environ.get("NNGLASS_API_KEY") or self._stored().get("api_key")

    @property
    def host(self) -> str:
        """The server's base URL (`CONFIG.API.HOST`/`SSL`, `$NNGLASS_HOST`, the file, the local default)."""
        return self.API.url() or self.stored_host()

    def stored_host(self) -> str:
        """The server URL from `$NNGLASS_HOST`, else the file, else the local default."""
        return os.environ.get("NNGLASS_HOST") or self._stored().get("host") or DEFAULT_HOST

    def set_default_api_key(self, key: str) -> None:
        """Save the API key in the settings file for every later session (and use it now)."""
        self.API._key = None
        self._store("api_key", key)

    def set_default_host(self, url: str) -> None:
        """Save the server URL (e.g. `http://127.0.0.1:8000`) in the settings file."""
        self.API._host = self.API._ssl = None
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
