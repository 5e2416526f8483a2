"""The OpenAPI description is valid, served, and matches what the service accepts and returns.

Real responses from the Flask test client (every status of every endpoint) are validated against
the schemas of the document; rows valid by the request schema must be accepted by validation.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
import referencing
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from measure_service import openapi
from measure_service.app import close_app, create_app, served_routes
from measure_service.config import Config
from measure_service.rows import ROW_STATUSES, QueryParams, validate_row
from measure_service.upstream import UpstreamError
from tests.measure_service.conftest import FakeUpstream

KEY = "client-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEC = openapi.spec()
_SPEC_URI = "urn:measure-service:openapi"
_REGISTRY = referencing.Registry().with_resource(
    _SPEC_URI, referencing.Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def schema_validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at JSON pointer ``pointer`` of the spec (refs resolved)."""
    return Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#{pointer}"},
        registry=_REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` of the spec, if ``node`` is one."""
    while "$ref" in node:
        document: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            document = document[part]
        node = document
    return node


def assert_conforms(response: TestResponse, method: str, path: str) -> None:
    """The status, content type, headers and body of ``response`` are those the spec documents."""
    operation = SPEC["paths"][path][method.lower()]
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {path} answered undocumented {status}"
    described = resolve(documented[status])
    for name, header in described.get("headers", {}).items():
        header = resolve(header)
        if header.get("required"):
            assert name in response.headers, f"{status} lacks header {name}"
            value = response.headers[name]
            errors = list(Draft202012Validator(header["schema"]).iter_errors(value))
            assert not errors, f"header {name}: {errors[0].message}"
    (media_type,) = described["content"]
    assert response.mimetype == media_type
    if media_type == "application/json":
        pointer = f"/paths/{path.replace('/', '~1')}/{method.lower()}/responses/{status}"
        if "$ref" in documented[status]:
            pointer = documented[status]["$ref"].removeprefix("#")
        errors = list(
            schema_validator(f"{pointer}/content/application~1json/schema").iter_errors(
                response.get_json()
            )
        )
        assert not errors, f"{method} {path} {status}: {errors[0].message}"


def site(name: str, **fields: Any) -> dict[str, Any]:
    return {"inventoryId": name, "utcDatetime": "2024-10-30", **fields}


@pytest.fixture
def app(upstream: FakeUpstream) -> Iterator[Flask]:
    config = Config(
        api_keys=(KEY,), wait_for_missing=True, wait_window_ms=2000,
        upstream_batch_window_ms=0.0, max_rows=5, max_body_bytes=4096,
    )
    application = create_app(config, upstream=upstream)
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_the_spec_is_a_valid_openapi_3_1_document() -> None:
    validate_spec(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def test_openapi_json_serves_the_packaged_yaml(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == yaml.safe_load(
        (resources.files("measure_service") / openapi.SPEC_FILE).read_text()
    )
    assert_conforms(response, "GET", "/openapi.json")


def test_every_route_of_the_app_is_documented_and_every_documented_one_exists(app: Flask) -> None:
    served = served_routes(app)
    documented = {
        (method.upper(), path)
        for path, operations in SPEC["paths"].items()
        for method in operations
    }
    assert served == documented


def test_every_row_status_conforms_to_the_response_schema(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    client.post("/v2/measure", json={"rows": [site("hit.com")]}, headers=AUTH)
    rows = [site("hit.com", rowIdentifier="h"), site("new.com", rowIdentifier=7), site("nodot"),
            {"inventoryId": 5}, "not a row"]
    response = client.post("/v2/measure", json={"rows": rows}, headers=AUTH)
    statuses = [row["status"] for row in response.get_json()["rows"]]
    assert statuses == ["hit", "fetched", "error", "invalid", "invalid"]
    assert_conforms(response, "POST", "/v2/measure")


def test_pending_rows_conform_to_the_response_schema(upstream: FakeUpstream) -> None:
    app = create_app(Config(api_keys=(KEY,), wait_for_missing=False), upstream=upstream)
    upstream.hold()
    response = app.test_client().post("/v2/measure", json={"rows": [site("a.com")]}, headers=AUTH)
    upstream.release()
    close_app(app)
    assert response.get_json()["rows"][0]["status"] == "pending"
    assert_conforms(response, "POST", "/v2/measure")


def test_unavailable_rows_conform_to_the_response_schema(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    upstream.fail_with = UpstreamError("http_5xx", "upstream answered 500", status=500)
    response = client.post("/v2/measure", json={"rows": [site("down.com")]}, headers=AUTH)
    assert response.get_json()["rows"][0]["status"] == "unavailable"
    assert_conforms(response, "POST", "/v2/measure")


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{", {}, 400),
        (b'{"rows": []}', {}, 400),
        (b'{"rows": [1, 2, 3, 4, 5, 6]}', {}, 400),
        (b'{"rows": [NaN]}', {}, 400),
        (b'{"rows": [1], "rows": [2]}', {}, 400),
        (b'{"rows": [1]}', {"Authorization": "Bearer wrong"}, 401),
        (b'{"rows": [1]}', {"Content-Type": "text/plain"}, 415),
        (b'{"rows": ["' + b"x" * 5000 + b'"]}', {}, 413),
    ],
    ids=["malformed", "empty", "too-many-rows", "nan", "duplicate-key", "bad-key", "text",
         "too-large"],
)
def test_every_error_conforms_to_the_documented_error_response(
    client: FlaskClient, body: bytes, headers: dict[str, str], status: int
) -> None:
    sent = {**AUTH, "Content-Type": "application/json", **headers}
    response = client.post("/v2/measure", data=body, headers=sent)
    assert response.status_code == status
    assert_conforms(response, "POST", "/v2/measure")


def test_a_bad_query_parameter_conforms_to_the_documented_400(client: FlaskClient) -> None:
    response = client.post("/v2/measure?latest=maybe", json={"rows": [site("a.com")]},
                           headers=AUTH)
    assert response.status_code == 400
    assert_conforms(response, "POST", "/v2/measure")


@pytest.mark.parametrize("path", ["/healthcheck", "/readyz", "/metrics"])
def test_probes_conform_to_the_spec(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert_conforms(response, "GET", path)


def test_readyz_while_stopping_conforms_to_the_documented_503(app: Flask) -> None:
    client = app.test_client()
    close_app(app)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert_conforms(response, "GET", "/readyz")


def _schema_valid_rows() -> st.SearchStrategy[dict[str, Any]]:
    text = st.none() | st.text(max_size=20)
    date = st.dates(min_value=datetime.date(1000, 1, 1)).map(_date_text)
    return st.fixed_dictionaries(
        {"inventoryId": st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
         "utcDatetime": date},
        optional={
            "impressions": st.integers(0, 10**12), "weight": st.integers(0, 100),
            "rowIdentifier": st.none() | st.text(max_size=10) | st.integers(),
            "country": text, "region": text, "channel": text, "deviceType": text,
            "network": text,
        },
    ).filter(_is_schema_valid_row)


def _date_text(day: datetime.date) -> str:
    """``day`` in one of the accepted spellings, chosen by the day itself."""
    return day.strftime(("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%Y-%m-%dT12:30:00Z")[day.day % 4])


_ROW_VALIDATOR = schema_validator("/components/schemas/RequestRow")


def _is_schema_valid_row(row: dict[str, Any]) -> bool:
    return _ROW_VALIDATOR.is_valid(row)


@settings(max_examples=200, suppress_health_check=[HealthCheck.filter_too_much])
@given(row=_schema_valid_rows())
def test_every_row_valid_by_the_request_schema_passes_validation(row: dict[str, Any]) -> None:
    assert validate_row(row, QueryParams(None, None)).error is None


@pytest.mark.parametrize(
    "row",
    [{"inventoryId": "a.com"}, {"utcDatetime": "2024-10-30"}, site("a.com", weight=101),
     site("a.com", impressions=-1), site("a.com", country=5), {**site("a.com"),
     "utcDatetime": "30/10/2024"}],
    ids=["no-date", "no-inventory", "weight", "impressions", "country", "date-format"],
)
def test_rows_the_schema_refuses_are_refused_by_validation(row: dict[str, Any]) -> None:
    assert not _ROW_VALIDATOR.is_valid(row)
    assert validate_row(row, QueryParams(None, None)).error is not None


def test_the_documented_row_limit_is_the_default_max_rows() -> None:
    rows = SPEC["components"]["schemas"]["MeasureRequest"]["properties"]["rows"]
    assert rows["maxItems"] == Config(api_keys=(KEY,)).max_rows


def test_the_documented_statuses_are_those_the_service_produces() -> None:
    status = SPEC["components"]["schemas"]["ResultRow"]["properties"]["status"]
    assert tuple(status["enum"]) == ROW_STATUSES


def test_the_spec_is_json_serialisable_as_served() -> None:
    assert json.loads(json.dumps(SPEC)) == SPEC
