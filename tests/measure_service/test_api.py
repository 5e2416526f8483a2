"""The HTTP contract of /v2/measure, /healthcheck and /readyz, through Flask's test client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from measure_service.app import close_app, create_app
from measure_service.config import Config
from tests.measure_service.conftest import FakeUpstream

KEY = "client-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 2048


def make_app(upstream: FakeUpstream, **overrides: Any) -> Flask:
    settings: dict[str, Any] = {
        "api_keys": (KEY, "other-key"), "wait_for_missing": True, "wait_window_ms": 2000,
        "upstream_batch_window_ms": 0.0, "max_rows": 5, "max_body_bytes": MAX_BODY,
        "service": "svc", "version": "1.2.3", "env": "test",
    }
    settings.update(overrides)
    return create_app(Config(**settings), upstream=upstream)


@pytest.fixture
def app(upstream: FakeUpstream) -> Iterator[Flask]:
    application = make_app(upstream)
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def measure(client: FlaskClient, rows: Any, query: str = "", **kwargs: Any) -> Any:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return client.post(f"/v2/measure{query}", json={"rows": rows}, headers=headers, **kwargs)


def site(name: str, **fields: Any) -> dict[str, Any]:
    return {"inventoryId": name, "utcDatetime": "2024-10-30", **fields}


def test_rows_come_back_in_request_order_with_their_identifiers(client: FlaskClient) -> None:
    rows = [site(f"s{n}.com", rowIdentifier=f"r{n}") for n in range(4)]
    body = measure(client, rows).get_json()
    assert [r["rowIdentifier"] for r in body["rows"]] == ["r0", "r1", "r2", "r3"]
    assert [r["propertyName"] for r in body["rows"]] == ["s0.com", "s1.com", "s2.com", "s3.com"]


def test_a_cold_row_is_fetched_then_a_hit(client: FlaskClient) -> None:
    first = measure(client, [site("nytimes.com", weight=10)]).get_json()["rows"][0]
    second = measure(client, [site("nytimes.com")]).get_json()["rows"][0]
    assert (first["status"], second["status"]) == ("fetched", "hit")
    assert second == {
        "rowIdentifier": None, "propertyName": "nytimes.com", "utcDateTime": "2024-10-30",
        "weight": 0, "totalEmissions": pytest.approx(66.0), "inventoryCoverage": "modeled",
        "status": "hit",
    }


def test_coverage_counts_each_status_and_total_sums_known_emissions(client: FlaskClient) -> None:
    measure(client, [site("a.com")])
    body = measure(client, [site("a.com"), site("b.com"), site("nodot"), {"x": 1}]).get_json()
    assert body["coverage"] == {
        "rows": 4, "hit": 1, "fetched": 1, "stale": 0, "pending": 0, "error": 1,
        "unavailable": 0, "invalid": 1,
    }
    assert body["totalEmissions"] == pytest.approx(132.0)


def test_an_invalid_row_carries_an_error_naming_the_field_and_is_not_sent_upstream(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    row = measure(client, [site("a.com", impressions=-5)]).get_json()["rows"][0]
    assert row["status"] == "invalid"
    assert "impressions" in row["error"]["message"]
    assert upstream.calls == []


def test_an_upstream_row_error_is_reported_with_its_message(client: FlaskClient) -> None:
    row = measure(client, [site("nodot")]).get_json()["rows"][0]
    assert row["status"] == "error"
    assert row["totalEmissions"] is None
    assert "nodot" in row["error"]["message"]


def test_without_waiting_a_cold_row_is_pending(upstream: FakeUpstream) -> None:
    app = make_app(upstream, wait_for_missing=False)
    upstream.hold()
    row = measure(app.test_client(), [site("a.com")]).get_json()["rows"][0]
    assert (row["status"], row["totalEmissions"]) == ("pending", None)
    upstream.release()
    close_app(app)


def test_query_parameters_are_forwarded_upstream(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    measure(client, [site("a.com")], query="?latest=true&framework=gmsf")
    assert upstream.calls[0][1] == {"latest": "true", "framework": "gmsf"}


def test_the_request_id_is_the_trace_id_echoed_in_the_header(client: FlaskClient) -> None:
    response = measure(client, [site("a.com")], headers={"X-Trace-Id": "trace-123"})
    assert response.headers["X-Trace-Id"] == "trace-123"
    assert response.get_json()["requestId"] == "trace-123"


def test_an_unsafe_client_trace_id_is_replaced_by_a_new_one(client: FlaskClient) -> None:
    response = measure(client, [site("a.com")], headers={"X-Trace-Id": "bad id\u00e9"})
    assert response.headers["X-Trace-Id"] != "bad id\u00e9"
    assert len(response.headers["X-Trace-Id"]) == 32


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
     {"Authorization": "Bearer"}],
)
def test_a_missing_or_wrong_key_gets_401_with_www_authenticate(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    response = client.post("/v2/measure", json={"rows": [site("a.com")]}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.get_json()


def test_any_configured_key_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/v2/measure", json={"rows": [site("a.com")]},
        headers={"Authorization": "Bearer other-key"},
    )
    assert response.status_code == 200


def test_auth_disabled_accepts_requests_without_a_key(upstream: FakeUpstream) -> None:
    app = make_app(upstream, api_keys=(), auth_disabled=True)
    response = app.test_client().post("/v2/measure", json={"rows": [site("a.com")]})
    assert response.status_code == 200
    close_app(app)


@pytest.mark.parametrize(
    ("data", "query"),
    [
        (b"{oops", ""),
        (b'{"rows": "a"}', ""),
        (b'{"rows": []}', ""),
        (b"{}", ""),
        (json.dumps({"rows": [site("a.com")] * 6}).encode(), ""),
        (json.dumps({"rows": [site("a.com")]}).encode(), "?latest=maybe"),
        (json.dumps({"rows": [site("a.com")]}).encode(), "?framework=%20"),
        (b"", ""),
    ],
)
def test_a_bad_body_or_query_gets_400_with_a_json_error(
    client: FlaskClient, data: bytes, query: str
) -> None:
    response = client.post(
        f"/v2/measure{query}", data=data, headers=AUTH, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.get_json()["error"]


def test_a_body_over_the_limit_gets_413(client: FlaskClient) -> None:
    data = json.dumps({"rows": [site("a" * MAX_BODY)]}).encode()
    response = client.post("/v2/measure", data=data, headers=AUTH, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]


def test_a_chunked_body_over_the_limit_gets_413(app: Flask) -> None:
    data = json.dumps({"rows": [site("a" * MAX_BODY)]}).encode()
    environ = EnvironBuilder(
        path="/v2/measure", method="POST", data=data, headers=list(AUTH.items()),
        content_type="application/json",
    ).get_environ()
    # What a server passes for a chunked body: no length, input terminated at its end.
    del environ["CONTENT_LENGTH"]
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    _, status, _ = run_wsgi_app(app, environ)
    assert status.startswith("413")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_gets_415(client: FlaskClient, content_type: str | None) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/v2/measure", data=b'{"rows": []}', headers=headers)
    assert response.status_code == 415
    assert response.get_json()["error"]


def test_a_json_suffix_content_type_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/v2/measure", data=json.dumps({"rows": [site("a.com")]}),
        headers={**AUTH, "Content-Type": "application/vnd.api+json"},
    )
    assert response.status_code == 200


def test_unknown_paths_and_methods_get_json_404_and_405(client: FlaskClient) -> None:
    missing = client.get("/nowhere")
    wrong_method = client.get("/v2/measure")
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    assert missing.get_json()["error"] and wrong_method.get_json()["error"]
    assert "POST" in wrong_method.headers["Allow"]


def test_an_unexpected_error_is_a_json_500_without_a_stack_trace(
    client: FlaskClient, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("measure_service.api.validate_row", explode)
    response = measure(client, [site("a.com")])
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    assert response.headers["X-Trace-Id"]


def test_healthcheck_reports_the_service(client: FlaskClient) -> None:
    assert client.get("/healthcheck").get_json() == {
        "environment": "test", "service": "svc", "version": "1.2.3", "status": "ok"
    }


def test_readyz_is_200_when_the_worker_can_serve(client: FlaskClient) -> None:
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_with_a_reason_when_upstream_refuses_the_token(
    app: Flask, client: FlaskClient
) -> None:
    services = app.extensions["measure_service"]
    app.extensions["measure_service"] = type(services)(
        config=services.config, fetcher=services.fetcher,
        not_ready=lambda: "upstream refused our API token", auth_keys=services.auth_keys,
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "token" in response.get_json()["reason"]


def test_every_response_carries_a_trace_id(client: FlaskClient) -> None:
    for response in (client.get("/healthcheck"), client.get("/nowhere"), measure(client, [])):
        assert response.headers["X-Trace-Id"]


def test_the_upstream_token_never_appears_in_a_response(upstream: FakeUpstream) -> None:
    app = make_app(upstream, scope3_api_token="upstream-secret-token")
    client = app.test_client()
    bodies = [
        measure(client, [site("a.com")]).get_data(as_text=True),
        client.get("/healthcheck").get_data(as_text=True),
        client.post("/v2/measure", json={"rows": []}).get_data(as_text=True),
    ]
    assert all("upstream-secret-token" not in body for body in bodies)
    close_app(app)


def test_without_a_config_the_factory_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    monkeypatch.setenv("API_KEYS", "env-key")
    monkeypatch.setenv("SERVICE", "from-env")
    app = create_app(upstream=upstream)
    assert app.test_client().get("/healthcheck").get_json()["service"] == "from-env"
    close_app(app)


def test_readyz_is_503_once_the_app_is_closed(app: Flask, client: FlaskClient) -> None:
    close_app(app)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["reason"]


def test_the_services_repr_shows_no_client_key(app: Flask) -> None:
    from measure_service import api

    services = app.extensions[api.EXTENSION]
    assert services.auth_keys and all(
        key.decode() not in repr(services) for key in services.auth_keys
    )


def test_the_apps_cache_is_guarded_by_an_os_lock_not_gevents_cooperative_one(
    monkeypatch: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    import _thread
    import threading

    import gevent.thread

    from measure_service.app import CACHE_EXTENSION

    # What gevent's patching does to the lock a cache would make for itself.
    monkeypatch.setattr(threading, "Lock", gevent.thread.LockType)
    app = make_app(upstream)
    assert type(app.extensions[CACHE_EXTENSION]._lock) is _thread.LockType
    close_app(app)
