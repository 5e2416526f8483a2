"""Config is read from the environment once, with errors that name the variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from measure_service.config import (
    Config,
    ConfigError,
    ServerConfig,
    markdown_table,
)

BASE = {"API_KEYS": "k1"}


def test_api_keys_are_split_on_commas_and_trimmed() -> None:
    assert Config.from_env({"API_KEYS": " a, b ,,c"}).api_keys == ("a", "b", "c")


def test_no_api_keys_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="API_KEYS"):
        Config.from_env({})


def test_auth_disabled_allows_starting_without_keys() -> None:
    assert Config.from_env({"AUTH_DISABLED": "true"}).api_keys == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("WAIT_FOR_MISSING", "maybe"),
        ("WAIT_WINDOW_MS", "-1"),
        ("CACHE_MAX_COST", "0"),
        ("CACHE_TTL_SECONDS", "1.5"),
        ("ERROR_TTL", "x"),
        ("UPSTREAM_TIMEOUT_MS", "0"),
        ("UPSTREAM_CONCURRENCY", "0"),
        ("UPSTREAM_BATCH_WINDOW_MS", "nan"),
        ("UPSTREAM_BATCH_ROWS", "0"),
        ("UPSTREAM_RETRIES", "-1"),
        ("MAX_PENDING_ROWS", "0"),
        ("BREAKER_FAILURES", "0"),
        ("BREAKER_COOLDOWN_S", "inf"),
        ("MAX_ROWS", "0"),
        ("MAX_BODY_BYTES", "10"),
        ("LOG_LEVEL", "LOUD"),
        ("SCOPE3_API_URL", "ftp://example.com"),
        ("AUTH_DISABLED", "sometimes"),
        ("ACCESS_LOG", "sample:2"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({**BASE, name: value})


def test_an_empty_variable_means_its_default() -> None:
    assert Config.from_env({**BASE, "PORT": " "}).port == 3000


def test_booleans_accept_common_spellings() -> None:
    assert Config.from_env({**BASE, "WAIT_FOR_MISSING": "TRUE"}).wait_for_missing is True
    assert Config.from_env({**BASE, "WAIT_FOR_MISSING": "0"}).wait_for_missing is False


def test_the_upstream_url_loses_its_trailing_slash() -> None:
    config = Config.from_env({**BASE, "SCOPE3_API_URL": "http://127.0.0.1:8081/"})
    assert config.scope3_api_url == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    ("value", "rate"), [("off", 0.0), ("on", 1.0), ("sample:0.25", 0.25), ("SAMPLE:1", 1.0)]
)
def test_access_log_setting_becomes_a_sampling_rate(value: str, rate: float) -> None:
    assert Config.from_env({**BASE, "ACCESS_LOG": value}).access_log_rate == rate


def test_repr_never_shows_the_upstream_token_or_keys() -> None:
    config = Config.from_env({"API_KEYS": "client-secret", "SCOPE3_API_TOKEN": "upstream-secret"})
    assert "secret" not in repr(config)


@pytest.mark.parametrize("settings", [Config, ServerConfig])
def test_the_readme_tables_are_the_declared_settings(settings: type[Any]) -> None:
    table = markdown_table(settings)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert table in readme, f"update README.md with:\n{table}"


def test_the_server_settings_are_read_from_the_environment() -> None:
    server = ServerConfig.from_env({"HOST": "127.0.0.1", "WEB_CONCURRENCY": "3"})
    assert (server.host, server.web_concurrency, server.gunicorn_keepalive) == ("127.0.0.1", 3, 5)


def test_a_bad_server_setting_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="WORKER_CONNECTIONS"):
        ServerConfig.from_env({"WORKER_CONNECTIONS": "0"})


def test_metrics_port_is_off_unless_set() -> None:
    assert Config.from_env({"API_KEYS": "k"}).metrics_port is None
    assert Config.from_env({"API_KEYS": "k", "METRICS_PORT": "9100"}).metrics_port == 9100


def test_metrics_port_equal_to_port_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Config.from_env({"API_KEYS": "k", "PORT": "3000", "METRICS_PORT": "3000"})


def test_the_shared_tier_is_off_by_default() -> None:
    config = Config.from_env(BASE)
    assert config.redis_url == ""
    assert config.redis_prefix == "measure:v1:"
    assert (config.redis_timeout_ms, config.redis_pool_size, config.redis_lease_ms) == (50, 8, 5000)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://user:pw@cache.internal:6380", "unix:///run/redis.sock"],
)
def test_redis_urls_of_every_supported_scheme_are_accepted(url: str) -> None:
    assert Config.from_env({**BASE, "REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://:secret@host:99999"),
        ("REDIS_URL", "redis://host/notanumber"),
        ("REDIS_URL", "redis://"),
        ("REDIS_URL", "unix://"),
        ("REDIS_PREFIX", "a{b}"),
        ("REDIS_PREFIX", "x" * 65),
        ("REDIS_TIMEOUT_MS", "0"),
        ("REDIS_POOL_SIZE", "many"),
        ("REDIS_LEASE_MS", "1"),
        ("REDIS_BREAKER_COOLDOWN_S", "nan"),
        ("REDIS_CLUSTER", "maybe"),
    ],
)
def test_a_bad_redis_setting_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({**BASE, name: value})


def test_a_bad_redis_url_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env({**BASE, "REDIS_URL": "redis://user:hunter2@host:99999/x"})
    assert "hunter2" not in str(error.value)


def test_the_redis_password_is_a_secret_and_not_in_the_repr() -> None:
    config = Config.from_env({**BASE, "REDIS_URL": "redis://user:hunter2@host:6379/0"})
    assert "hunter2" in config.secrets
    assert "hunter2" not in repr(config)
