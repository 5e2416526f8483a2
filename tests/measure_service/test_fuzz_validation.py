"""Arbitrary bytes and JSON values thrown at the validation layer and the view, in process.

Whatever arrives, the outcome is a 400/413/415 with a JSON ``{"error": ...}`` or a 200 whose
invalid rows name the field; never an uncaught exception. Each test runs
``MEASURE_FUZZ_EXAMPLES`` examples (default 100, kept small for ``make test``); ``bench/fuzz.sh``
raises it for the large run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from measure_service.app import close_app, create_app
from measure_service.config import Config
from measure_service.rows import BodyError, QueryParams, Row, parse_body, validate_row
from tests.measure_service.conftest import FakeUpstream

EXAMPLES = int(os.environ.get("MEASURE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
KEY = "fuzz-key"
MAX_ROWS = 50
MAX_BODY = 64 * 1024
FIELDS = (
    "inventoryId", "utcDatetime", "impressions", "weight", "rowIdentifier", "country", "region",
    "channel", "deviceType", "network",
)
NO_PARAMS = QueryParams(None, None)

scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20,
)


def any_case(name: str) -> st.SearchStrategy[str]:
    """``name`` with each letter in either case (the service matches names case-insensitively)."""
    flags = st.lists(st.booleans(), min_size=len(name), max_size=len(name))
    return flags.map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True)
        )
    )


field_values = json_values | st.sampled_from(
    ["2024-10-30", "20241030", "2024/10/30", "2024-02-30", "nytimes.com", " A.com ", "", "x" * 600]
)
rows = st.dictionaries(
    st.sampled_from(FIELDS).flatmap(any_case) | st.text(max_size=10), field_values, max_size=12
)


def assert_row_is_consistent(row: Row) -> None:
    """A valid row has a key and no error; an invalid one has an error naming a field."""
    if row.error is None:
        assert row.key is not None
        assert 0 <= row.weight <= 100
    else:
        assert row.key is None
        assert any(field in row.error for field in ("row", *FIELDS)), row.error


@FUZZ
@given(body=st.binary(max_size=2048))
def test_arbitrary_bytes_give_rows_or_a_body_error(body: bytes) -> None:
    try:
        parsed = parse_body(body, MAX_ROWS)
    except BodyError as exc:
        assert str(exc)
    else:
        assert isinstance(parsed, list) and 0 < len(parsed) <= MAX_ROWS


@FUZZ
@given(document=json_values)
def test_arbitrary_json_documents_give_rows_or_a_body_error(document: Any) -> None:
    body = json.dumps(document, allow_nan=True).encode()
    try:
        parsed = parse_body(body, MAX_ROWS)
    except BodyError as exc:
        assert str(exc)
        return
    for raw in parsed:
        assert_row_is_consistent(validate_row(raw, NO_PARAMS))


@FUZZ
@given(raw=json_values | rows)
def test_arbitrary_rows_are_valid_or_carry_an_error_naming_the_field(raw: Any) -> None:
    assert_row_is_consistent(validate_row(raw, NO_PARAMS))


@FUZZ
@given(raw=rows)
def test_a_row_validates_the_same_after_a_json_round_trip(raw: dict[str, Any]) -> None:
    text = json.dumps({"rows": [raw]}, allow_nan=True).encode()
    try:
        (decoded,) = parse_body(text, MAX_ROWS)
    except BodyError:
        return  # NaN or Infinity somewhere, or duplicate keys: refused as a whole
    assert validate_row(decoded, NO_PARAMS).error == validate_row(raw, NO_PARAMS).error


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    config = Config(
        api_keys=(KEY,), wait_for_missing=False, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY,
        upstream_batch_window_ms=0.0,
    )
    application = create_app(config, upstream=FakeUpstream())
    yield application
    close_app(application)


content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/problem+json",
     "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
bodies = (
    st.binary(max_size=2048)
    | json_values.map(lambda value: json.dumps(value, allow_nan=True).encode())
    | st.lists(rows, max_size=8).map(lambda rs: json.dumps({"rows": rs}, allow_nan=True).encode())
)
queries = st.dictionaries(st.sampled_from(["latest", "framework", "other"]), st.text(max_size=70),
                          max_size=2)


@FUZZ
@given(body=bodies, content_type=content_types, query=queries)
def test_the_view_answers_any_body_with_a_json_4xx_or_200(
    app: Flask, body: bytes, content_type: str, query: dict[str, str]
) -> None:
    response = app.test_client().post(
        "/v2/measure", data=body, query_string=query,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
    )
    assert response.status_code in (200, 400, 415), response.get_data()
    document = response.get_json()
    if response.status_code == 200:
        assert len(document["rows"]) == document["coverage"]["rows"]
    else:
        assert isinstance(document["error"], str) and document["error"]
