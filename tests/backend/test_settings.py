"""The settings module: environment variables with defaults, read once; secrets stay out of reprs."""
from __future__ import annotations

import pytest

from regionscribe.backend.core.settings import Settings, get_settings


def test_defaults_and_parsing():
    s = Settings.from_env({})
    assert s.redis_url is None and s.port == 9090 and s.inference_queue == "inference" and s.allowed_hosts == ()
    s = Settings.from_env({"REDIS_URL": "redis://r:6379/0", "PORT": "9999", "PREDICT_TIMEOUT": "2.5",
                           "ALLOWED_HOSTS": " a.example.com, *.cdn.example.com ,,", "LABEL_STUDIO_URL": "http://ls:8080/",
                           "MODEL_DIR": "", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    assert (s.redis_url, s.port, s.predict_timeout) == ("redis://r:6379/0", 9999, 2.5)
    assert s.allowed_hosts == ("a.example.com", "*.cdn.example.com")
    assert s.label_studio_url == "http://ls:8080" and s.model_dir is None and s.basic_auth_enabled


def test_label_studio_tool_names_are_accepted():
    s = Settings.from_env({"LABEL_STUDIO_HOST": "http://h:8080", "LABEL_STUDIO_ACCESS_TOKEN": "t"})
    assert (s.label_studio_url, s.label_studio_api_key) == ("http://h:8080", "t")


def test_bad_numbers_name_the_variable():
    with pytest.raises(ValueError, match="PORT='abc'"):
        Settings.from_env({"PORT": "abc"})


def test_sync_interval():
    assert Settings.from_env({}).sync_interval == 300
    assert Settings.from_env({"SYNC_INTERVAL": "0"}).sync_interval == 0  # off
    with pytest.raises(ValueError, match="SYNC_INTERVAL='-5'"):
        Settings.from_env({"SYNC_INTERVAL": "-5"})
    with pytest.raises(ValueError, match="SYNC_INTERVAL='often'"):
        Settings.from_env({"SYNC_INTERVAL": "often"})
    assert not Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080"}).label_studio_api_enabled
    assert Settings.from_env({"LABEL_STUDIO_URL": "http://ls", "LABEL_STUDIO_API_KEY": "k"}).label_studio_api_enabled


def test_secrets_are_not_in_the_repr():
    s = Settings.from_env({"LABEL_STUDIO_API_KEY": "sekrit-key", "BASIC_AUTH_PASS": "sekrit-pass"})
    assert "sekrit" not in repr(s)


def test_read_once():
    assert get_settings() is get_settings()


def test_demonstrations():
    assert Settings.from_env({}).demonstrations == 0  # off
    assert Settings.from_env({"DEMONSTRATIONS": "4"}).demonstrations == 4
    for bad in ("-1", "17"):
        with pytest.raises(ValueError, match=f"DEMONSTRATIONS='{bad}'"):
            Settings.from_env({"DEMONSTRATIONS": bad})
    with pytest.raises(ValueError, match="DEMONSTRATIONS='four'"):
        Settings.from_env({"DEMONSTRATIONS": "four"})
