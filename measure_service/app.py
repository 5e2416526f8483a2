"""The application factory: builds one Flask app with its own cache, upstream client and fetcher.

Nothing happens at import time. Under gunicorn (``preload_app = False``) each worker calls
:func:`create_app` after the fork, so every worker owns its cache, connection pool and greenlets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask
from gevent import monkey

from measure_service import api, logs, metrics_endpoint, openapi, shared_tier
from measure_service.breaker import CircuitBreaker
from measure_service.concurrency_limiter import AdaptiveLimiter
from measure_service.config import Config
from measure_service.fetcher import (
    AnswerCache,
    CachedAnswer,
    Fetcher,
    FetcherSettings,
    Upstream,
)
from measure_service.request_telemetry import RequestTelemetry
from measure_service.rows import RowKey
from measure_service.upstream import UpstreamClient
from weighted_cache import Cache as WeightedCache


def create_app(
    config: Config | None = None,
    *,
    upstream: Upstream | None = None,
    cache: AnswerCache | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Flask:
    """Build the app from ``config`` (default: the environment).

    ``upstream`` and ``cache`` replace the real Scope3 client and cache (tests pass fakes);
    ``clock`` dates cache entries.
    """
    config = Config.from_env() if config is None else config
    logs.configure_logging(config.log_level, secrets=config.secrets)
    app = Flask(__name__)
    # ``/v2//measure`` is a path we do not serve (a JSON 404), never a redirect to another one.
    app.url_map.merge_slashes = False
    closers: list[Callable[[], None]] = []
    if cache is None:
        built = _default_cache(config, clock)
        closers.append(built.close)
        cache = built
    services, service_closers = _build_services(config, upstream, cache, clock)
    closers[:0] = service_closers  # fetches stop before the cache closes
    app.extensions[api.EXTENSION] = services
    app.extensions[CACHE_EXTENSION] = cache
    app.extensions[_CLOSERS] = closers
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    register_extensions(app)
    served: api.WSGIApp = api.MeasureEndpoint(app.extensions, app.wsgi_app)
    if config.metrics_port is not None:
        served = api.MetricsListener(served, config.metrics_port)
    routes = {path for _, path in served_routes(app)}
    app.wsgi_app = RequestTelemetry(served, routes)  # type: ignore[method-assign]
    return app


def served_routes(app: Flask) -> set[tuple[str, str]]:
    """Every (method, path) the app answers: its Flask routes and the measure endpoint."""
    served = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.arguments
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    return served | {("POST", api.MEASURE_PATH)}


def register_extensions(app: Flask) -> None:
    """Attach add-ons to a fully built app: the /metrics exporter and the cache metrics.

    The cache metrics read ``app.extensions[CACHE_EXTENSION]``; their refreshes stop first when
    the app closes.
    """
    stop_refreshing = metrics_endpoint.install(app, app.extensions[CACHE_EXTENSION])
    app.extensions[_CLOSERS].insert(0, stop_refreshing)


def close_app(app: Flask) -> None:
    """Stop the app's background fetches and close its upstream connections (worker exit)."""
    app.extensions.pop(api.EXTENSION, None)
    for close in app.extensions.pop(_CLOSERS, ()):
        close()


CACHE_EXTENSION = "measure_service.cache"
# The lock type gevent's patching replaces (the same one when nothing is patched).
_os_lock = monkey.get_original("_thread", "allocate_lock")
_CLOSERS = "measure_service.closers"


def _default_cache(
    config: Config, clock: Callable[[], float]
) -> WeightedCache[RowKey, CachedAnswer]:
    # An OS lock rather than gevent's cooperative one, which costs every request more: nothing
    # the cache runs under it can switch greenlets (keys are tuples of text and numbers, the
    # clock is a plain function, callbacks run after it is released).
    return WeightedCache(config.cache_max_cost, clock=clock, lock=_os_lock())


def _build_services(
    config: Config, upstream: Upstream | None, cache: AnswerCache, clock: Callable[[], float]
) -> tuple[api.Services, list[Callable[[], None]]]:
    """The services of one app, and what to close at exit (in order: fetches first)."""
    closers: list[Callable[[], None]] = []
    breaker: CircuitBreaker | None = None
    limiter = AdaptiveLimiter(config.upstream_concurrency)
    not_ready: Callable[[], str | None] = _always_ready
    if upstream is None:
        # Half the read timeout: far beyond a healthy answer, and soon enough that calls started
        # after a hang's first timeouts count before they time out themselves.
        breaker = CircuitBreaker(
            config.breaker_failures,
            config.breaker_cooldown_s,
            overdue_after_s=config.upstream_timeout_ms / 2000,
            waiting_since=limiter.waiting_since,
        )
        client = UpstreamClient(
            config.scope3_api_url,
            config.scope3_api_token,
            connect_timeout_s=config.upstream_connect_timeout_ms / 1000,
            read_timeout_s=config.upstream_timeout_ms / 1000,
            pool_size=config.upstream_concurrency,
            retries=config.upstream_retries,
            breaker=breaker,
            limiter=limiter,
        )
        upstream = client
        closers.append(client.close)

        def not_ready() -> str | None:
            failure = client.auth_failure
            return None if failure is None else f"upstream refused our API token: {failure}"

    settings = FetcherSettings(
        ttl_s=config.cache_ttl_seconds,
        stale_s=config.cache_stale_seconds,
        error_ttl_s=config.error_ttl,
        batch_window_s=config.upstream_batch_window_ms / 1000,
        batch_rows=config.upstream_batch_rows,
        max_pending_rows=config.max_pending_rows,
        concurrency=config.upstream_concurrency,
        wait_s=config.wait_s,
        rows_per_s=config.upstream_rows_per_s,
        requests_per_s=config.upstream_requests_per_s,
        tenants=max(1, len(config.api_keys)),
        retries=config.upstream_retries,
    )
    shared = shared_tier.build(config)
    fetcher = Fetcher(
        cache, upstream, settings, breaker=breaker, limiter=limiter, shared=shared, clock=clock
    )
    closers.insert(0, fetcher.close)
    keys = tuple(key.encode() for key in config.api_keys)
    services = api.Services(
        config=config, fetcher=fetcher, not_ready=not_ready, auth_keys=keys,
        shared_status=_tier_off if shared is None else shared.status,
    )
    return services, closers


def _always_ready() -> str | None:
    return None


def _tier_off() -> tuple[str, str | None]:
    return "off", None
