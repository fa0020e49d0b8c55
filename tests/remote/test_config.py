"""nnglass.CONFIG: the API key and host persist in the settings file; environment variables override it."""
import json
import stat

import pytest

from nnglass import CONFIG
from nnglass.config import DEFAULT_HOST


@pytest.fixture
def settings(tmp_path, monkeypatch):
    path = tmp_path / "nested" / "config.json"
    monkeypatch.setenv("NNGLASS_CONFIG", str(path))
    monkeypatch.delenv("NNGLASS_API_KEY", raising=False)
    monkeypatch.delenv("NNGLASS_HOST", raising=False)
    return path


def test_defaults_without_a_file(settings):
    assert CONFIG.path == settings and CONFIG.api_key is None and CONFIG.host == DEFAULT_HOST


def test_set_default_api_key_and_host_persist(settings):
    CONFIG.set_default_api_key("YOUR_API_KEY")
    CONFIG.set_default_host("http://example.org:8000/")
    assert json.loads(settings.read_text()) == {"api_key": "YOUR_API_KEY", "host": "http://example.org:8000"}
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert CONFIG.api_key == "YOUR_API_KEY" and CONFIG.host == "http://example.org:8000"
    assert "YOUR_API_KEY" not in repr(CONFIG)


def test_environment_overrides_the_file(settings, monkeypatch):
    CONFIG.set_default_api_key("from-file")
    monkeypatch.setenv("NNGLASS_API_KEY", "from-env")
    monkeypatch.setenv("NNGLASS_HOST", "http://10.0.0.1:9000")
    assert CONFIG.api_key == "from-env" and CONFIG.host == "http://10.0.0.1:9000"


def test_a_broken_file_is_a_clear_error(settings):
    settings.parent.mkdir(parents=True)
    settings.write_text("{not json")
    with pytest.raises(RuntimeError, match="cannot read the nnglass settings file"):
        CONFIG.api_key
