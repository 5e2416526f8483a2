"""/metrics through Flask's test client: HTTP metrics per route, and the cache's own figures.

The process records metrics the way a gunicorn worker does (multiprocess files), and other
tests add to the same counters, so counts are compared before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from devtools.probes import Samples, parse_metrics
from measure_service import metrics_endpoint, prometheus_metrics, request_telemetry
from measure_service.app import close_app, create_app
from measure_service.config import Config
from tests.conftest import FakeClock
from tests.measure_service.conftest import FakeUpstream
from weighted_cache import Cache

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_COST = 5000
MEASURE = {"method": "POST", "path": "/v2/measure", "status": "200"}


def make_app(upstream: FakeUpstream, cache: Cache[Any, Any] | None = None) -> Flask:
    config = Config(
        api_keys=(KEY,), wait_for_missing=True, wait_window_ms=2000, upstream_batch_window_ms=0.0
    )
    return create_app(config, upstream=upstream, cache=cache)


@pytest.fixture
def cache() -> Cache[Any, Any]:
    return Cache(MAX_COST)


@pytest.fixture
def app(upstream: FakeUpstream, cache: Cache[Any, Any]) -> Iterator[Flask]:
    application = make_app(upstream, cache)
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def scrape(client: FlaskClient) -> Samples:
    """Every sample of one /metrics answer, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.get_data(as_text=True))


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def measure(client: FlaskClient, *names: str) -> None:
    rows = [{"inventoryId": name, "utcDatetime": "2024-10-30"} for name in names]
    assert client.post("/v2/measure", json={"rows": rows}, headers=AUTH).status_code == 200


def test_metrics_serves_the_service_metrics_as_prometheus_text(client: FlaskClient) -> None:
    measure(client, "text.example.com")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    for name in ("measure_cache_hits_total", "measure_upstream_rows_total",
                 "measure_cache_entries", "flask_http_request_duration_seconds"):
        assert f"# TYPE {name}" in text


@pytest.mark.parametrize(("name", "label", "values"), [
    ("measure_upstream_requests_total", "outcome", prometheus_metrics.UPSTREAM_OUTCOMES),
    ("measure_upstream_unavailable_rows_total", "reason", prometheus_metrics.UNAVAILABLE_REASONS),
    ("measure_upstream_breaker_transitions_total", "to", prometheus_metrics.BREAKER_STATES),
    ("measure_wait_window_total", "outcome", prometheus_metrics.WAIT_RESULTS),
])
def test_every_known_label_value_is_exported_before_its_first_increment(
    client: FlaskClient, name: str, label: str, values: tuple[str, ...]
) -> None:
    # rate() and increase() miss the increment that creates a series: it must exist at 0 first.
    samples = scrape(client)
    for known in values:
        assert (name, frozenset({(label, known)})) in samples, f"{name}{{{label}={known!r}}}"


def test_a_measure_request_is_counted_under_its_route_and_status(client: FlaskClient) -> None:
    before = scrape(client)
    measure(client, "counted.example.com")
    after = scrape(client)
    name = "flask_http_request_duration_seconds_count"
    assert value(after, name, **MEASURE) == value(before, name, **MEASURE) + 1


def test_the_latency_buckets_resolve_a_millisecond(client: FlaskClient) -> None:
    measure(client, "buckets.example.com")
    samples = scrape(client)
    bounds = {
        dict(labels)["le"] for name, labels in samples
        if name == "flask_http_request_duration_seconds_bucket"
    }
    assert {"0.0005", "0.001", "0.002", "0.005", "0.01"} <= bounds


def test_an_unknown_url_is_counted_as_unmatched_not_by_its_path(client: FlaskClient) -> None:
    before = scrape(client)
    client.get("/no/such/page-7f3a")
    after = scrape(client)
    unmatched = {"method": "GET", "path": "unmatched", "status": "404"}
    name = "flask_http_request_duration_seconds_count"
    assert value(after, name, **unmatched) == value(before, name, **unmatched) + 1
    assert not any("page-7f3a" in str(labels) for _, labels in after)


@pytest.mark.parametrize("path", request_telemetry.UNTRACKED_PATHS)
def test_probes_and_scrapes_are_not_counted(client: FlaskClient, path: str) -> None:
    before = scrape(client)
    client.get(path)
    after = scrape(client)
    count = "flask_http_request_duration_seconds_count"
    assert value(after, count, method="GET", path=path, status="200") == 0.0
    assert value(after, "flask_http_request_total", method="GET", status="200") == value(
        before, "flask_http_request_total", method="GET", status="200"
    )


def test_a_scrape_reports_the_cache_entries_cost_and_budget(
    client: FlaskClient, cache: Cache[Any, Any]
) -> None:
    measure(client, "one.example.com", "two.example.com")
    samples = scrape(client)
    assert len(cache) == 2
    assert value(samples, "measure_cache_entries") == 2
    assert value(samples, "measure_cache_cost_used") == cache.cost_used
    assert value(samples, "measure_cache_max_cost") == MAX_COST


def test_cache_hits_and_misses_are_counted_per_row(client: FlaskClient) -> None:
    before = scrape(client)
    measure(client, "hm1.example.com", "hm2.example.com")
    measure(client, "hm1.example.com", "hm2.example.com", "hm3.example.com")
    after = scrape(client)
    assert value(after, "measure_cache_misses_total") - value(
        before, "measure_cache_misses_total"
    ) == 3
    assert value(after, "measure_cache_hits_total") - value(before, "measure_cache_hits_total") == 2


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_evictions_reach_the_counter_once_each() -> None:
    cache: Cache[int, int] = Cache(3)
    recorder = metrics_endpoint.CacheMetrics(cache)
    for key in range(3):
        cache.set(key, key)
    cache.set(0, 0, cost=2)  # pushes one other entry out
    before = counter("measure_cache_evictions_total")
    recorder.refresh()
    recorder.refresh()
    assert cache.metrics.keys_evicted == 1
    assert counter("measure_cache_evictions_total") == before + 1


def test_expirations_reach_the_counter(clock: FakeClock) -> None:
    cache: Cache[str, int] = Cache(100, clock=clock)
    recorder = metrics_endpoint.CacheMetrics(cache)
    cache.set("short", 1, ttl=1.0)
    clock.advance(2.0)
    assert cache.get("short") is None
    before = counter("measure_cache_expirations_total")
    recorder.refresh()
    assert counter("measure_cache_expirations_total") == before + 1


def test_many_apps_in_one_process_each_serve_metrics(upstream: FakeUpstream) -> None:
    apps = [make_app(upstream) for _ in range(3)]
    try:
        for application in apps:
            measure(application.test_client(), "many.example.com")
            assert application.test_client().get("/metrics").status_code == 200
    finally:
        for application in apps:
            close_app(application)


def test_an_app_whose_cache_is_not_a_weighted_cache_still_serves_metrics() -> None:
    plain = Flask("plain")
    stop = metrics_endpoint.install(plain, object())
    try:
        assert plain.test_client().get("/metrics").status_code == 200
    finally:
        stop()
