"""The service's configuration: one frozen dataclass, read from the environment in one place."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
MIB = 1024 * 1024


class ConfigError(ValueError):
    """A configuration variable is missing or has a bad value; the message names it."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the service reads from its environment, validated once at start.

    Each field is documented by its variable; the README's table is built from this list.

    - ``ENV`` (``development``): environment name reported by ``/healthcheck``.
    - ``PORT`` (``3000``): TCP port gunicorn binds on ``0.0.0.0``.
    - ``SERVICE`` (``measure-cache``): service name reported by ``/healthcheck``.
    - ``VERSION`` (``dev``): version reported by ``/healthcheck``.
    - ``WAIT_FOR_MISSING`` (``false``): wait up to ``WAIT_WINDOW_MS`` for missed rows.
    - ``SCOPE3_API_TOKEN`` (empty): bearer token sent upstream; never logged or returned.
    - ``SCOPE3_API_URL`` (``https://api.scope3.com``): upstream base URL (http or https).
    - ``API_KEYS`` (empty): comma-separated client keys accepted as ``Authorization: Bearer``.
    - ``AUTH_DISABLED`` (``false``): must be ``true`` to start without ``API_KEYS``.
    - ``WAIT_WINDOW_MS`` (``45``): longest wait for misses when ``WAIT_FOR_MISSING`` is on.
    - ``CACHE_MAX_COST`` (``10000000``): cost budget of the cache; a row costs 1..100 by weight.
    - ``CACHE_TTL_SECONDS`` (``86400``): age after which an entry is stale.
    - ``CACHE_STALE_SECONDS`` (``86400``): how long past the TTL a stale entry is still served.
    - ``ERROR_TTL`` (``300``): seconds a row-level upstream error is cached.
    - ``UPSTREAM_TIMEOUT_MS`` (``5000``): read timeout of one upstream request.
    - ``UPSTREAM_CONNECT_TIMEOUT_MS`` (``1000``): connect timeout of one upstream request.
    - ``UPSTREAM_CONCURRENCY`` (``4``): most upstream requests in flight per worker (pool
      size). The number actually allowed adapts under it: cut on 429s and timeouts and when
      answers slow down, grown back while they come fast. Small on purpose: misses wait for a
      free slot and pile into bigger batches, so more slots mostly split batches into more
      requests (and Scope3 answers 429 under load).
    - ``UPSTREAM_BATCH_WINDOW_MS`` (``2``): how long misses are gathered into one upstream batch.
    - ``UPSTREAM_BATCH_ROWS`` (``500``): rows that close a batch at once.
    - ``UPSTREAM_RETRIES`` (``2``): retries of a failed upstream request (429, 5xx, network).
    - ``MAX_PENDING_ROWS`` (``10000``): rows waiting for upstream per worker, shared fairly
      between client keys: a key past its share gets ``unavailable`` for its new rows.
    - ``UPSTREAM_ROWS_PER_S`` (``0``): new rows sent upstream per second per worker, shared
      fairly between client keys like ``MAX_PENDING_ROWS``; 0 is no bound.
    - ``UPSTREAM_REQUESTS_PER_S`` (``0``): upstream requests per second per worker, shared
      between client keys by their rows in each request; 0 is no bound.
    - ``BREAKER_FAILURES`` (``5``): consecutive failed upstream requests that open the breaker.
      Once one has failed, requests still unanswered after half of ``UPSTREAM_TIMEOUT_MS``
      count too: a hung upstream fails at most ``UPSTREAM_CONCURRENCY`` requests per timeout.
    - ``BREAKER_COOLDOWN_S`` (``10``): seconds the breaker stays open before one probe.
    - ``MAX_ROWS`` (``1000``): most rows in one request.
    - ``MAX_BODY_BYTES`` (``1048576``): largest request body.
    - ``LOG_LEVEL`` (``INFO``): level of the application's JSON logs.
    - ``ACCESS_LOG`` (``sample:0.01``): gunicorn access log: ``off``, ``on`` or
      ``sample:<rate>`` (a fraction of requests, 0..1).
    """

    env: str = "development"
    port: int = 3000
    service: str = "measure-cache"
    version: str = "dev"
    wait_for_missing: bool = False
    scope3_api_token: str = ""
    scope3_api_url: str = "https://api.scope3.com"
    api_keys: tuple[str, ...] = ()
    auth_disabled: bool = False
    wait_window_ms: int = 45
    cache_max_cost: int = 10_000_000
    cache_ttl_seconds: int = 86_400
    cache_stale_seconds: int = 86_400
    error_ttl: int = 300
    upstream_timeout_ms: int = 5_000
    upstream_connect_timeout_ms: int = 1_000
    upstream_concurrency: int = 4
    upstream_batch_window_ms: float = 2.0
    upstream_batch_rows: int = 500
    upstream_retries: int = 2
    max_pending_rows: int = 10_000
    upstream_rows_per_s: float = 0.0
    upstream_requests_per_s: float = 0.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    max_rows: int = 1000
    max_body_bytes: int = MIB
    log_level: str = "INFO"
    access_log_rate: float = 0.01

    def __post_init__(self) -> None:
        """Refuse a configuration that would leave the API open by accident."""
        if not self.api_keys and not self.auth_disabled:
            raise ConfigError(
                "API_KEYS is empty: set API_KEYS to comma-separated client keys, "
                "or AUTH_DISABLED=true to run without authentication"
            )

    @property
    def wait_s(self) -> float:
        """How long a request waits for its misses: the window, or 0 without WAIT_FOR_MISSING."""
        return self.wait_window_ms / 1000 if self.wait_for_missing else 0.0

    def __repr__(self) -> str:
        """Show every field except the secrets."""
        return f"Config(env={self.env!r}, service={self.service!r}, port={self.port}, ...)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from ``environ`` (default ``os.environ``); raise ConfigError."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        return cls(
            env=r.text("ENV", "development"),
            port=r.integer("PORT", 3000, low=1, high=65535),
            service=r.text("SERVICE", "measure-cache"),
            version=r.text("VERSION", "dev"),
            wait_for_missing=r.boolean("WAIT_FOR_MISSING", False),
            scope3_api_token=r.text("SCOPE3_API_TOKEN", ""),
            scope3_api_url=r.url("SCOPE3_API_URL", "https://api.scope3.com"),
            api_keys=r.keys("API_KEYS"),
            auth_disabled=r.boolean("AUTH_DISABLED", False),
            wait_window_ms=r.integer("WAIT_WINDOW_MS", 45, low=0, high=60_000),
            cache_max_cost=r.integer("CACHE_MAX_COST", 10_000_000, low=1),
            cache_ttl_seconds=r.integer("CACHE_TTL_SECONDS", 86_400, low=1),
            cache_stale_seconds=r.integer("CACHE_STALE_SECONDS", 86_400, low=0),
            error_ttl=r.integer("ERROR_TTL", 300, low=1),
            upstream_timeout_ms=r.integer("UPSTREAM_TIMEOUT_MS", 5_000, low=1),
            upstream_connect_timeout_ms=r.integer("UPSTREAM_CONNECT_TIMEOUT_MS", 1_000, low=1),
            upstream_concurrency=r.integer("UPSTREAM_CONCURRENCY", 4, low=1, high=1024),
            upstream_batch_window_ms=r.number("UPSTREAM_BATCH_WINDOW_MS", 2.0, low=0, high=10_000),
            upstream_batch_rows=r.integer("UPSTREAM_BATCH_ROWS", 500, low=1, high=100_000),
            upstream_retries=r.integer("UPSTREAM_RETRIES", 2, low=0, high=10),
            max_pending_rows=r.integer("MAX_PENDING_ROWS", 10_000, low=1),
            upstream_rows_per_s=r.number("UPSTREAM_ROWS_PER_S", 0.0, low=0, high=1e9),
            upstream_requests_per_s=r.number("UPSTREAM_REQUESTS_PER_S", 0.0, low=0, high=1e9),
            breaker_failures=r.integer("BREAKER_FAILURES", 5, low=1),
            breaker_cooldown_s=r.number("BREAKER_COOLDOWN_S", 10.0, low=0.001, high=86_400),
            max_rows=r.integer("MAX_ROWS", 1000, low=1, high=1_000_000),
            max_body_bytes=r.integer("MAX_BODY_BYTES", MIB, low=64),
            log_level=r.choice("LOG_LEVEL", "INFO", _LOG_LEVELS),
            access_log_rate=parse_access_log(env.get("ACCESS_LOG", "sample:0.01")),
        )


def parse_access_log(value: str) -> float:
    """Turn ``ACCESS_LOG`` (``off``, ``on`` or ``sample:<rate>``) into a sampling rate in 0..1."""
    text = value.strip().lower()
    if text in ("off", ""):
        return 0.0
    if text == "on":
        return 1.0
    if text.startswith("sample:"):
        try:
            rate = float(text.removeprefix("sample:"))
        except ValueError:
            rate = math.nan
        if 0.0 <= rate <= 1.0:
            return rate
    raise ConfigError(f"ACCESS_LOG must be off, on or sample:<rate in 0..1>, got {value!r}")


class _Reader:
    """Typed getters over an environment mapping; each error names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def _get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return parse(raw.strip())

    def text(self, name: str, default: str) -> str:
        return self._get(name, default, str)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ConfigError(f"{name} must be true or false, got {raw!r}")

        return self._get(name, default, parse)

    def integer(self, name: str, default: int, *, low: int, high: int | None = None) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            _check_range(name, value, low, high)
            return value

        return self._get(name, default, parse)

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {raw!r}")
            _check_range(name, value, low, high)
            return value

        return self._get(name, default, parse)

    def choice(self, name: str, default: str, allowed: frozenset[str]) -> str:
        def parse(raw: str) -> str:
            if raw.upper() not in allowed:
                raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {raw!r}")
            return raw.upper()

        return self._get(name, default, parse)

    def url(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
            return raw.rstrip("/")

        return self._get(name, default, parse)

    def keys(self, name: str) -> tuple[str, ...]:
        raw = self._env.get(name, "")
        return tuple(key.strip() for key in raw.split(",") if key.strip())


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
