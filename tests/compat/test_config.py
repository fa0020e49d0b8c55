"""nnsight 0.4's CONFIG.API (in memory) and CONFIG.APP switches."""
import json

import pytest
import torch

from nnglass import CONFIG
from nnglass.config import DEFAULT_HOST


@pytest.fixture
def settings(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    monkeypatch.setenv("NNGLASS_CONFIG", str(path))
    monkeypatch.delenv("NNGLASS_API_KEY", raising=False)
    monkeypatch.delenv("NNGLASS_HOST", raising=False)
    yield path
    CONFIG.API._host = CONFIG.API._key = CONFIG.API._ssl = None


def test_api_reads_what_the_settings_say(settings):
    CONFIG.set_default_api_key("from-file")
    assert CONFIG.API.APIKEY == "from-file"
    assert CONFIG.API.HOST == DEFAULT_HOST.split("://")[1] and CONFIG.API.SSL is False


def test_api_settings_live_in_memory_and_win(settings):
    CONFIG.set_default_host("http://stored:1")
    CONFIG.API.HOST = "example.org:8000"   # 0.4 writes the host without a scheme; SSL defaults to on
    CONFIG.API.APIKEY = "in-memory"
    assert CONFIG.host == "https://example.org:8000" and CONFIG.api_key == "in-memory"
    CONFIG.API.SSL = False
    assert CONFIG.host == "http://example.org:8000" and CONFIG.API.SSL is False
    assert json.loads(settings.read_text()) == {"host": "http://stored:1"}  # nothing persisted


def test_ssl_alone_changes_the_scheme_of_the_stored_host(settings):
    CONFIG.set_default_host("http://stored:1")
    CONFIG.API.SSL = True
    assert CONFIG.host == "https://stored:1"


def test_set_default_keeps_persisting_and_replaces_the_in_memory_values(settings):
    CONFIG.API.HOST, CONFIG.API.APIKEY = "a:1", "b"
    CONFIG.set_default_host("http://c:2")
    CONFIG.set_default_api_key("d")
    assert CONFIG.host == "http://c:2" and CONFIG.api_key == "d"
    assert json.loads(settings.read_text()) == {"host": "http://c:2", "api_key": "d"}


def test_app_switches_exist_with_0_4_defaults():
    app = CONFIG.APP
    assert (app.CONTROL_FLOW_HANDLING, app.FRAME_INJECTION, app.DEBUG, app.REMOTE_LOGGING) == (True, True, False, True)


@pytest.fixture
def no_control_flow():
    CONFIG.APP.CONTROL_FLOW_HANDLING = False
    yield
    CONFIG.APP.CONTROL_FLOW_HANDLING = True


def test_control_flow_handling_off_makes_native_if_an_error(tiny, x, no_control_flow):
    from nnglass import TraceError
    with pytest.raises(TraceError, match="no truth value"):
        with tiny.trace(x):
            if tiny.layer1.output.sum() > 0:
                pass
    CONFIG.APP.CONTROL_FLOW_HANDLING = True
    with tiny.trace(x):
        if tiny.layer1.output.sum() > -1e9:
            out = tiny.output.save()
    assert torch.equal(out, tiny._model(x))


def test_debug_and_frame_injection_are_accepted(tiny, x):
    CONFIG.APP.DEBUG = True
    CONFIG.APP.FRAME_INJECTION = False
    try:
        with tiny.trace(x):
            out = tiny.output.save()
    finally:
        CONFIG.APP.DEBUG, CONFIG.APP.FRAME_INJECTION = False, True
    assert torch.equal(out, tiny._model(x))
