"""The WSGI hot path of POST /v2/measure: same answers as the Flask view, Flask for the rest."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder

from measure_service import logs
from measure_service.app import close_app, create_app
from measure_service.config import Config
from tests.measure_service.conftest import FakeUpstream

KEY = "hot-key"
ROWS = [{"inventoryId": f"hot{i}.example.com", "utcDatetime": "2024-10-30", "rowIdentifier": i}
        for i in range(3)]


@pytest.fixture
def app(upstream: FakeUpstream) -> Iterator[Flask]:
    config = Config(api_keys=(KEY,), wait_for_missing=True, wait_window_ms=2000,
                    upstream_batch_window_ms=0.0, max_body_bytes=4096)
    application = create_app(config, upstream=upstream)
    yield application
    close_app(application)


def call(
    app: Flask, body: bytes, *, query: str = "", flask_only: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[str, dict[str, str], Any, dict[str, Any]]:
    """Call the app as gunicorn does (or only Flask's own WSGI app, which the hot path wraps);
    return status, headers, decoded body and the environ."""
    sent: dict[str, str] = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    sent.update(headers or {})
    environ = EnvironBuilder(
        path="/v2/measure", method="POST", query_string=query, data=body,
        headers=list(sent.items()),
    ).get_environ()
    answer: dict[str, Any] = {}

    def start_response(status: str, header_list: list[tuple[str, str]], exc: Any = None) -> Any:
        answer.update(status=status, headers=dict(header_list))

    wsgi: Any = functools.partial(Flask.wsgi_app, app) if flask_only else app
    data = b"".join(wsgi(environ, start_response))
    environ["test.body"] = data
    return answer["status"], answer["headers"], json.loads(data), environ


def rows_body(rows: Any) -> bytes:
    return json.dumps({"rows": rows}).encode()


def test_a_valid_request_gets_rows_in_order_with_its_trace_id(app: Flask) -> None:
    status, headers, document, _ = call(app, rows_body(ROWS), headers={"X-Trace-Id": "hot-1"})
    assert status.startswith("200")
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Trace-Id"] == document["requestId"] == "hot-1"
    assert [row["rowIdentifier"] for row in document["rows"]] == [0, 1, 2]
    assert document["coverage"]["rows"] == 3


@pytest.mark.parametrize("query", ["", "latest=true&framework=f1"])
def test_the_answer_is_the_one_the_flask_view_gives(app: Flask, query: str) -> None:
    call(app, rows_body(ROWS), query=query)  # fetch once, so that both answers are hits
    _, hot_headers, hot, _ = call(app, rows_body(ROWS), query=query)
    _, flask_headers, via_flask, _ = call(app, rows_body(ROWS), query=query, flask_only=True)
    for document in (hot, via_flask):
        del document["requestId"]
    assert hot == via_flask
    assert hot_headers["Content-Type"] == flask_headers["Content-Type"]


def test_query_parameters_reach_upstream_from_the_hot_path(
    app: Flask, upstream: FakeUpstream
) -> None:
    call(app, rows_body(ROWS[:1]), query="framework=f9&latest=TRUE")
    assert upstream.calls[-1][1] == {"framework": "f9", "latest": "true"}


def test_a_bad_query_string_gets_flasks_400(app: Flask) -> None:
    status, _, document, _ = call(app, rows_body(ROWS), query="latest=maybe")
    assert status.startswith("400")
    assert "latest" in document["error"]


def test_the_content_length_header_matches_the_body(app: Flask) -> None:
    _, headers, _, environ = call(app, rows_body(ROWS))
    assert int(headers["Content-Length"]) == len(environ["test.body"])


def test_the_access_log_counts_reach_the_environ(app: Flask) -> None:
    *_, environ = call(app, rows_body([*ROWS, {"inventoryId": 5}]))
    assert (environ[logs.ENVIRON_ROWS], environ[logs.ENVIRON_MISSES]) == (4, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"rows": []}', "rows must not be empty"), (b"{not json", "body is not valid JSON")],
)
def test_a_bad_body_read_by_the_hot_path_still_gets_flasks_400(
    app: Flask, body: bytes, message: str
) -> None:
    status, _, document, _ = call(app, body)
    assert status.startswith("400")
    assert document["error"].startswith(message)


def test_a_wrong_key_gets_flasks_401(app: Flask) -> None:
    status, headers, document, _ = call(
        app, rows_body(ROWS), headers={"Authorization": "Bearer nope"}
    )
    assert status.startswith("401")
    assert "WWW-Authenticate" in headers and "error" in document


def test_a_body_over_the_limit_gets_flasks_413(app: Flask) -> None:
    status, _, _, _ = call(app, rows_body([ROWS[0]] * 100))
    assert status.startswith("413")


def test_an_unexpected_error_is_a_json_500_that_names_nothing(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("measure_service.api.validate_row", explode)
    status, _, document, _ = call(app, rows_body(ROWS))
    assert (status[:3], document) == ("500", {"error": "internal error"})


def test_other_routes_are_served_by_flask(app: Flask) -> None:
    assert app.test_client().get("/healthcheck").get_json()["status"] == "ok"
