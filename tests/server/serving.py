"""A real uvicorn server on 127.0.0.1 (in a thread of the test process) hosting models, with a test API key."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from nnglass import NNsight
from nnglass.server import BackgroundServer, Limits, create_app
from tests.conftest import make_net


def tiny_model() -> NNsight:
    """The walkthrough's two-layer net (same seeded weights as the `net` fixture), named "tiny" for servers."""
    model = NNsight(make_net())
    model._remote_name = "tiny"
    return model


@dataclass
class Hosted:
    """A running server: its app (app.state.keys, app.state.host), URL and a valid token."""

    app: Any
    url: str
    token: str


@contextlib.contextmanager
def hosting(models: dict[str, Any], folder: Path, limits: Limits | None = None) -> Iterator[Hosted]:
    """Serve models with a fresh key database in folder; point nnglass.CONFIG (through env vars) at it."""
    app = create_app(models, f"sqlite:///{folder / 'keys.db'}", limits)
    _, token = app.state.keys.create("tester")
    with BackgroundServer(app) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("NNGLASS_HOST", url)
        patch.setenv("NNGLASS_API_KEY", token)
        patch.setenv("NNGLASS_CONFIG", str(folder / "config.json"))
        yield Hosted(app, url, token)
