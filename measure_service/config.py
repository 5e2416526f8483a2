"""The service's configuration: every environment variable declared once, read in one place.

Each setting is one declaration, ``field: type = setting(NAME, default text, parser, doc)``,
in :class:`Config` (read by the app) or :class:`ServerConfig` (read by ``gunicorn.conf.py``).
``from_env`` reads them, and the README's configuration tables are :func:`markdown_table` of
both classes (a test checks they match). Adding a setting is adding one declaration.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
Parser = Callable[[str, str], T]  # (variable name, stripped non-empty text) -> value

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SETTING = "setting"
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class ConfigError(ValueError):
    """A configuration variable is missing or has a bad value; the message names it."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default (as env text), parser and meaning."""

    name: str
    default: str
    parse: Parser[Any]
    doc: str
    shown: str | None = None  # how the README shows the default, when not the text itself


def setting(name: str, default: str, parse: Parser[T], doc: str, *, shown: str | None = None) -> T:
    """Declare a dataclass field read from the variable ``name``.

    ``default`` is written as the variable's text; the field's default is its parsed value. An
    unset or blank variable means the default.
    """
    value = parse(name, default)
    declared = Setting(name, default, parse, doc, shown)
    result: T = field(default=value, metadata={_SETTING: declared})
    return result


# --- parsers: each takes the variable's name (for its errors) and its stripped text ----------


def text(name: str, raw: str) -> str:
    """Any text."""
    return raw


def boolean(name: str, raw: str) -> bool:
    """``true``/``false`` and common spellings (``1``, ``yes``, ``on``, ...)."""
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def integer(low: int, high: int | None = None) -> Parser[int]:
    """An integer in ``low..high`` (no upper bound when ``high`` is None); ``_`` allowed."""

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        _check_range(name, value, low, high)
        return value

    return parse


def number(low: float, high: float) -> Parser[float]:
    """A finite number in ``low..high``."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}")
        _check_range(name, value, low, high)
        return value

    return parse


def choice(*allowed: str) -> Parser[str]:
    """One of ``allowed``, in any case; the value is upper-cased."""

    def parse(name: str, raw: str) -> str:
        if raw.upper() not in allowed:
            raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {raw!r}")
        return raw.upper()

    return parse


def http_url(name: str, raw: str) -> str:
    """An http(s) URL with a host, without its trailing slash."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def optional_port(name: str, raw: str) -> int | None:
    """A TCP port (1..65535), or None when empty (the feature is off)."""
    if not raw:
        return None
    port: int = integer(1, 65535)(name, raw)
    return port


def redis_url(name: str, raw: str) -> str:
    """Empty (no Redis), or a ``redis://``, ``rediss://`` or ``unix://`` URL.

    Errors show the URL without its password.
    """
    if not raw:
        return ""
    try:
        parts = urlsplit(raw)
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL: {redact_url(raw)!r}") from None
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ConfigError(f"{name} must name a host, got {redact_url(raw)!r}")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ConfigError(f"{name} path must be a database number, got {redact_url(raw)!r}")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{name} must name a socket path, got {redact_url(raw)!r}")
    else:
        raise ConfigError(
            f"{name} must be a redis://, rediss:// or unix:// URL, got {redact_url(raw)!r}"
        )
    return raw


def key_prefix(name: str, raw: str) -> str:
    """Up to 64 printable characters without braces.

    Braces would change the hash tag that keeps a row and its lease in one Cluster slot.
    """
    if len(raw) > 64 or not raw.isprintable() or "{" in raw or "}" in raw:
        raise ConfigError(
            f"{name} must be at most 64 printable characters without braces, got {raw!r}"
        )
    return raw


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced, for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED_URL
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:{REDACTED}@{host}").geturl()


REDACTED = "[redacted]"
# Shown instead of a URL that does not even parse: it may hold a password anywhere.
REDACTED_URL = "[unparsable URL redacted]"


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated items, trimmed, empty ones dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def access_log_rate(name: str, raw: str) -> float:
    """``off``, ``on`` or ``sample:<rate>``, as a sampling rate in 0..1."""
    text_ = raw.strip().lower()
    if text_ in ("off", ""):
        return 0.0
    if text_ == "on":
        return 1.0
    if text_.startswith("sample:"):
        try:
            rate = float(text_.removeprefix("sample:"))
        except ValueError:
            rate = math.nan
        if 0.0 <= rate <= 1.0:
            return rate
    raise ConfigError(f"{name} must be off, on or sample:<rate in 0..1>, got {raw!r}")


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


# --- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the app reads from its environment, validated once at start."""

    env: str = setting("ENV", "development", text, "environment name reported by `/healthcheck`.")
    port: int = setting("PORT", "3000", integer(1, 65535), "TCP port gunicorn binds.")
    service: str = setting(
        "SERVICE", "measure-cache", text, "service name reported by `/healthcheck`."
    )
    version: str = setting("VERSION", "dev", text, "version reported by `/healthcheck`.")
    wait_for_missing: bool = setting(
        "WAIT_FOR_MISSING", "false", boolean, "wait up to `WAIT_WINDOW_MS` for missed rows."
    )
    scope3_api_token: str = setting(
        "SCOPE3_API_TOKEN", "", text, "bearer token sent upstream; never logged or returned."
    )
    scope3_api_url: str = setting(
        "SCOPE3_API_URL", "https://api.scope3.com", http_url, "upstream base URL (http or https)."
    )
    api_keys: tuple[str, ...] = setting(
        "API_KEYS", "", comma_list,
        "comma-separated client keys accepted as `Authorization: Bearer`.",
    )
    auth_disabled: bool = setting(
        "AUTH_DISABLED", "false", boolean, "must be `true` to start without `API_KEYS`."
    )
    wait_window_ms: int = setting(
        "WAIT_WINDOW_MS", "45", integer(0, 60_000),
        "longest wait for misses when `WAIT_FOR_MISSING` is on.",
    )
    cache_max_cost: int = setting(
        "CACHE_MAX_COST", "10000000", integer(1),
        "cost budget of each worker's cache. A row costs `100 - weight` (1 for weight 100)"
        " times its size in 512-byte units (a typical row is one unit), so a full cache holds"
        " at most about `CACHE_MAX_COST` x 600 bytes, whatever clients send.",
    )
    cache_ttl_seconds: int = setting(
        "CACHE_TTL_SECONDS", "86400", integer(1), "age after which an entry is stale."
    )
    cache_stale_seconds: int = setting(
        "CACHE_STALE_SECONDS", "86400", integer(0),
        "how long past the TTL a stale entry is still served.",
    )
    error_ttl: int = setting(
        "ERROR_TTL", "300", integer(1), "seconds a row-level upstream error is cached."
    )
    upstream_timeout_ms: int = setting(
        "UPSTREAM_TIMEOUT_MS", "5000", integer(1), "read timeout of one upstream request."
    )
    upstream_connect_timeout_ms: int = setting(
        "UPSTREAM_CONNECT_TIMEOUT_MS", "1000", integer(1),
        "connect timeout of one upstream request.",
    )
    upstream_concurrency: int = setting(
        "UPSTREAM_CONCURRENCY", "4", integer(1, 1024),
        "most upstream requests in flight per worker (pool size). The number allowed adapts"
        " under it: cut on 429s and timeouts and when answers slow down, grown back while"
        " they come fast. Small on purpose: misses wait for a free slot and pile into bigger"
        " batches, so more slots mostly split batches into more requests (and Scope3 answers"
        " 429 under load).",
    )
    upstream_batch_window_ms: float = setting(
        "UPSTREAM_BATCH_WINDOW_MS", "2", number(0, 10_000),
        "how long misses are gathered into one upstream batch.",
    )
    upstream_batch_rows: int = setting(
        "UPSTREAM_BATCH_ROWS", "500", integer(1, 100_000), "rows that close a batch at once."
    )
    upstream_retries: int = setting(
        "UPSTREAM_RETRIES", "2", integer(0, 10),
        "retries of a failed upstream request (429). A batch that fails in a way one row may"
        " cause (5xx, timeout, dropped connection, malformed answer) is split and its parts"
        " sent again instead (a lone row: once more, unless this is 0).",
    )
    max_pending_rows: int = setting(
        "MAX_PENDING_ROWS", "10000", integer(1),
        "rows waiting for upstream per worker, shared fairly between client keys: a key past"
        " its share gets `unavailable` (reason `tenant_pending_share`) for its new rows, never"
        " another key's. See Fair shares.",
    )
    upstream_rows_per_s: float = setting(
        "UPSTREAM_ROWS_PER_S", "0", number(0, 1e9),
        "new rows sent upstream per second per worker, shared fairly between client keys"
        " (reason `tenant_rows_share`); 0 is no bound.",
    )
    upstream_requests_per_s: float = setting(
        "UPSTREAM_REQUESTS_PER_S", "0", number(0, 1e9),
        "upstream requests per second per worker, each charged to the client keys by their"
        " rows in it; a key past its share gets no new rows (reason `tenant_requests_share`);"
        " 0 is no bound.",
    )
    breaker_failures: int = setting(
        "BREAKER_FAILURES", "5", integer(1),
        "consecutive failed upstream requests that open the breaker. Once one has failed,"
        " requests still unanswered after half of `UPSTREAM_TIMEOUT_MS` count too, sent or"
        " (after a timeout or connection error, not a 429 or 5xx) still waiting for a free"
        " upstream slot: a hung upstream fails at most `UPSTREAM_CONCURRENCY` requests per"
        " timeout, fewer when the adaptive limit is cut.",
    )
    breaker_cooldown_s: float = setting(
        "BREAKER_COOLDOWN_S", "10", number(0.001, 86_400),
        "seconds the breaker stays open before one probe.",
    )
    max_rows: int = setting("MAX_ROWS", "1000", integer(1, 1_000_000), "most rows in one request.")
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", "1048576", integer(64), "largest request body."
    )
    body_timeout_ms: int = setting(
        "BODY_TIMEOUT_MS", "5000", integer(1, 600_000),
        "longest time to receive a whole request body; a slower client gets 408 and the"
        " connection is closed.",
    )
    metrics_port: int | None = setting(
        "METRICS_PORT", "", optional_port,
        "when set, `/metrics` is served on this port only (its own listener, bound on `HOST`)"
        " and the public port answers 404 there.",
        shown="off",
    )
    log_level: str = setting(
        "LOG_LEVEL", "INFO", choice(*_LOG_LEVELS), "level of the application's JSON logs."
    )
    access_log_rate: float = setting(
        "ACCESS_LOG", "sample:0.01", access_log_rate,
        "gunicorn access log: `off`, `on` or `sample:<rate>` (a fraction of requests, 0..1).",
    )
    redis_url: str = setting(
        "REDIS_URL", "", redis_url,
        "the shared tier's Redis: `redis://`, `rediss://` (TLS) or `unix://`; empty turns the"
        " tier off. A password in it is a secret: never logged or returned.",
    )
    redis_prefix: str = setting(
        "REDIS_PREFIX", "measure:v1:", key_prefix,
        "prefix of every Redis key, so deployments can share a server and a schema change can"
        " move to new keys.",
    )
    redis_cluster: bool = setting(
        "REDIS_CLUSTER", "false", boolean, "`REDIS_URL` names a node of a Redis Cluster."
    )
    redis_timeout_ms: int = setting(
        "REDIS_TIMEOUT_MS", "50", integer(1, 60_000),
        "socket timeout of one Redis round trip, and longest wait for a pooled connection:"
        " Redis is an accelerator, so a slow one is given up quickly.",
    )
    redis_connect_timeout_ms: int = setting(
        "REDIS_CONNECT_TIMEOUT_MS", "200", integer(1, 60_000),
        "connect timeout to Redis (a TLS handshake needs more than a round trip).",
    )
    redis_pool_size: int = setting(
        "REDIS_POOL_SIZE", "8", integer(1, 1024), "Redis connections per worker."
    )
    redis_lease_ms: int = setting(
        "REDIS_LEASE_MS", "5000", integer(10, 3_600_000),
        "how long a fetch lease lasts: a holder that dies delays its rows by at most this long.",
    )
    redis_breaker_failures: int = setting(
        "REDIS_BREAKER_FAILURES", "3", integer(1),
        "consecutive failed Redis round trips that open the Redis breaker.",
    )
    redis_breaker_cooldown_s: float = setting(
        "REDIS_BREAKER_COOLDOWN_S", "2", number(0.001, 86_400),
        "seconds the Redis breaker stays open before one probe.",
    )

    def __post_init__(self) -> None:
        """Refuse a configuration that would leave the API open by accident."""
        if not self.api_keys and not self.auth_disabled:
            raise ConfigError(
                "API_KEYS is empty: set API_KEYS to comma-separated client keys, "
                "or AUTH_DISABLED=true to run without authentication"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ConfigError(f"METRICS_PORT must differ from PORT ({self.port})")

    @property
    def wait_s(self) -> float:
        """How long a request waits for its misses: the window, or 0 without WAIT_FOR_MISSING."""
        return self.wait_window_ms / 1000 if self.wait_for_missing else 0.0

    @property
    def max_body_chunks(self) -> int:
        """Most chunks a chunked body may come in: one per 256 bytes of ``MAX_BODY_BYTES``.

        A chunk costs the server's reader as much as a few hundred bytes of body.
        """
        return max(self.max_body_bytes // 256, 64)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values never to be logged or returned: the upstream token, the Redis password."""
        password = urlsplit(self.redis_url).password if self.redis_url else None
        return tuple(secret for secret in (self.scope3_api_token, password) if secret)

    def __repr__(self) -> str:
        """Show who this is, never the secrets."""
        return f"Config(env={self.env!r}, service={self.service!r}, port={self.port}, ...)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from ``environ`` (default ``os.environ``); raise ConfigError."""
        return cls(**read_settings(cls, os.environ if environ is None else environ))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What ``gunicorn.conf.py`` alone reads: the server around the app."""

    host: str = setting(
        "HOST", "0.0.0.0", text, "bind address (tests use `127.0.0.1`); the port is `PORT`."
    )
    web_concurrency: int = setting(
        "WEB_CONCURRENCY", str(os.cpu_count() or 1), integer(1), "worker processes.",
        shown="number of cores",
    )
    worker_connections: int = setting(
        "WORKER_CONNECTIONS", "1000", integer(1), "concurrent connections per worker."
    )
    gunicorn_timeout: int = setting(
        "GUNICORN_TIMEOUT", "30", integer(1),
        "seconds without a heartbeat before a worker is replaced.",
    )
    gunicorn_graceful_timeout: int = setting(
        "GUNICORN_GRACEFUL_TIMEOUT", "20", integer(1),
        "seconds in-flight requests get to finish on SIGTERM or reload.",
    )
    gunicorn_keepalive: int = setting(
        "GUNICORN_KEEPALIVE", "5", integer(1), "seconds an idle keep-alive connection is kept."
    )
    metrics_dir: str = setting(
        METRICS_DIR_VARIABLE, "", text, "where workers write their metrics.",
        shown="a new temporary directory",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Build the server settings from ``environ`` (default ``os.environ``)."""
        return cls(**read_settings(cls, os.environ if environ is None else environ))


def settings_of(cls: type[Any]) -> list[tuple[Field[Any], Setting]]:
    """Each field of a settings class with its declaration, in declaration order."""
    return [(f, f.metadata[_SETTING]) for f in fields(cls) if _SETTING in f.metadata]


def read_settings(cls: type[Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The field values of ``cls`` read from ``environ``; a blank or unset variable: default."""
    values: dict[str, Any] = {}
    for f, declared in settings_of(cls):
        raw = environ.get(declared.name, "").strip()
        values[f.name] = declared.parse(declared.name, raw) if raw else f.default
    return values


def markdown_table(cls: type[Any]) -> str:
    """The README's table of the variables ``cls`` declares."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for _, declared in settings_of(cls):
        shown = declared.shown or (f"`{declared.default}`" if declared.default else "empty")
        lines.append(f"| `{declared.name}` | {shown} | {declared.doc} |")
    return "\n".join(lines)


def ensure_metrics_dir() -> str | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a new private directory when none is set.

    prometheus_client picks its value class when first imported, so this runs before that. A
    directory made here is returned, and removed when the process that made it exits (forked
    children inherit the exit hook, and must not remove what their parent still uses).
    """
    if os.environ.get(METRICS_DIR_VARIABLE):
        return None
    directory = tempfile.mkdtemp(prefix="measure-metrics-")
    os.environ[METRICS_DIR_VARIABLE] = directory
    owner = os.getpid()
    atexit.register(_remove_if_owner, directory, owner)
    return directory


def _remove_if_owner(directory: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)
