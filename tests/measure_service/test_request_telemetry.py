"""The request telemetry wrapper: trace id, HTTP metrics labels, and the DEBUG request line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from measure_service import logs, prometheus_metrics
from measure_service.request_telemetry import RequestTelemetry


def make_app() -> Flask:
    app = Flask("telemetry")

    @app.route("/known", methods=["GET", "POST"])
    def known() -> dict[str, Any]:
        return {"trace": logs.current_trace_id()}

    app.wsgi_app = RequestTelemetry(app.wsgi_app, ["/known"])  # type: ignore[method-assign]
    return app


def count(**labels: str) -> float:
    prometheus_metrics.flush()
    return REGISTRY.get_sample_value("flask_http_request_duration_seconds_count", labels) or 0.0


def test_the_view_sees_the_trace_id_the_response_carries() -> None:
    response = make_app().test_client().get("/known", headers={"X-Trace-Id": "abc-123"})
    assert response.headers["X-Trace-Id"] == "abc-123"
    assert response.json == {"trace": "abc-123"}


def test_the_trace_id_does_not_outlive_the_request() -> None:
    make_app().test_client().get("/known", headers={"X-Trace-Id": "gone-after"})
    assert logs.current_trace_id() is None


def test_an_unusual_method_is_counted_as_other() -> None:
    labels = {"method": "other", "path": "/known", "status": "405"}
    before = count(**labels)
    make_app().test_client().open("/known", method="BREW")
    assert count(**labels) == before + 1


@pytest.fixture
def debug_lines() -> Iterator[io.StringIO]:
    logger = logging.getLogger("measure_service.request_telemetry")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_at_debug_each_request_logs_one_line_with_the_shared_fields(
    debug_lines: io.StringIO,
) -> None:
    make_app().test_client().post("/known", headers={"X-Trace-Id": "dbg-1"})
    line = json.loads(debug_lines.getvalue())
    assert {key: line[key] for key in ("trace_id", "method", "path", "status")} == {
        "trace_id": "dbg-1", "method": "POST", "path": "/known", "status": 200,
    }
    assert line["duration_ms"] >= 0
    assert set(logs.FIELDS) <= set(line)
