"""The one door of POST /v2/measure: every answer of that path, each gate once."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
                    upstream_batch_window_ms=0.0, max_body_bytes=4096, body_timeout_ms=200)
    application = create_app(config, upstream=upstream)
    yield application
    close_app(application)


def call(
    app: Flask, body: bytes, *, query: str = "", headers: dict[str, str] | None = None,
    method: str = "POST", path: str = "/v2/measure", stream: Any = None,
) -> tuple[str, dict[str, str], Any, dict[str, Any]]:
    """Call the app as gunicorn does; return status, headers, decoded body and the environ."""
    sent: dict[str, str] = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    sent.update(headers or {})
    environ = EnvironBuilder(
        path=path, method=method, query_string=query, data=body,
        headers=[(name, value) for name, value in sent.items() if value],
    ).get_environ()
    if stream is not None:
        environ["wsgi.input"] = stream
        environ["CONTENT_LENGTH"] = sent.get("Content-Length", "")
    answer: dict[str, Any] = {}

    def start_response(status: str, header_list: list[tuple[str, str]], exc: Any = None) -> Any:
        answer.update(status=status, headers=dict(header_list))

    data = b"".join(app(environ, start_response))
    environ["test.body"] = data
    return answer["status"], answer["headers"], json.loads(data) if data else None, environ


def rows_body(rows: Any) -> bytes:
    return json.dumps({"rows": rows}).encode()


def test_a_valid_request_gets_rows_in_order_with_its_trace_id(app: Flask) -> None:
    status, headers, document, _ = call(app, rows_body(ROWS), headers={"X-Trace-Id": "hot-1"})
    assert status.startswith("200")
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Trace-Id"] == document["requestId"] == "hot-1"
    assert [row["rowIdentifier"] for row in document["rows"]] == [0, 1, 2]
    assert document["coverage"]["rows"] == 3


def test_query_parameters_reach_upstream_(
    app: Flask, upstream: FakeUpstream
) -> None:
    call(app, rows_body(ROWS[:1]), query="framework=f9&latest=TRUE")
    assert upstream.calls[-1][1] == {"framework": "f9", "latest": "true"}


def test_a_bad_query_string_gets_400(app: Flask) -> None:
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
def test_a_bad_body_gets_400(
    app: Flask, body: bytes, message: str
) -> None:
    status, _, document, _ = call(app, body)
    assert status.startswith("400")
    assert document["error"].startswith(message)


def test_a_wrong_key_gets_401(app: Flask) -> None:
    status, headers, document, _ = call(
        app, rows_body(ROWS), headers={"Authorization": "Bearer nope"}
    )
    assert status.startswith("401")
    assert "WWW-Authenticate" in headers and "error" in document


def test_a_body_over_the_limit_gets_413(app: Flask) -> None:
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


def test_a_doubled_slash_gets_a_json_404_not_a_redirect(app: Flask) -> None:
    status, headers, document, _ = call(app, rows_body(ROWS), path="/v2//measure")
    assert status.startswith("404")
    assert headers["Content-Type"] == "application/json" and document["error"]
    assert "Location" not in headers


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_another_method_gets_a_json_405_naming_post(app: Flask, method: str) -> None:
    status, headers, document, _ = call(app, b"", method=method)
    assert status.startswith("405") and document["error"]
    assert "POST" in headers["Allow"]


def test_options_lists_the_allowed_methods(app: Flask) -> None:
    status, headers, _, _ = call(app, b"", method="OPTIONS")
    assert status.startswith("200") and "POST" in headers["Allow"]


@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "identity"])
def test_a_transfer_coding_other_than_chunked_gets_a_json_400(app: Flask, coding: str) -> None:
    status, _, document, _ = call(app, rows_body(ROWS), headers={"Transfer-Encoding": coding})
    assert status.startswith("400") and "Transfer-Encoding" in document["error"]


def test_a_chunked_body_without_length_is_read_to_its_end(app: Flask) -> None:
    status, _, document, _ = call(
        app, b"", headers={"Transfer-Encoding": "chunked"}, stream=io.BytesIO(rows_body(ROWS))
    )
    assert status.startswith("200") and document["coverage"]["rows"] == 3


def test_a_chunked_body_over_the_limit_gets_413(app: Flask) -> None:
    big = io.BytesIO(rows_body([ROWS[0]] * 100))
    status, _, _, _ = call(app, b"", headers={"Transfer-Encoding": "chunked"}, stream=big)
    assert status.startswith("413")


def test_a_body_shorter_than_its_content_length_gets_400(app: Flask) -> None:
    body = rows_body(ROWS)
    status, _, document, _ = call(
        app, body, headers={"Content-Length": str(len(body) + 10)}, stream=io.BytesIO(body)
    )
    assert status.startswith("400") and "cut short" in document["error"]


class Trickle(io.RawIOBase):
    """A body that sends one byte, then nothing for a long time."""

    def __init__(self) -> None:
        self.sent = False

    def read(self, size: int = -1) -> bytes:
        if not self.sent:
            self.sent = True
            return b"{"
        gevent.sleep(30)
        return b""


def test_a_body_slower_than_the_deadline_gets_408_and_closes_the_connection(app: Flask) -> None:
    status, headers, document, _ = call(
        app, b"", headers={"Content-Length": "100"}, stream=Trickle()
    )
    assert status.startswith("408") and document["error"]
    assert headers["Connection"] == "close"


def test_the_body_is_parsed_once_whatever_it_holds(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from measure_service import api

    calls: list[bytes] = []
    real = api.parse_body

    def counted(body: bytes, max_rows: int) -> list[Any]:
        calls.append(body)
        return real(body, max_rows)

    monkeypatch.setattr(api, "parse_body", counted)
    for body in (rows_body(ROWS), b"{not json", b'{"rows": []}'):
        calls.clear()
        call(app, body)
        assert calls == [body]


def test_a_worker_without_services_answers_503(app: Flask) -> None:
    close_app(app)
    status, _, document, _ = call(app, rows_body(ROWS))
    assert status.startswith("503") and document["error"]


METHODS = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"])
PATHS = st.sampled_from(["/v2/measure", "/v2//measure", "//v2/measure", "/v2/measure/",
                         "/V2/measure", "/nowhere", "/healthcheck", "/readyz", "/openapi.json"])
HEADERS = st.fixed_dictionaries({}, optional={
    "Authorization": st.sampled_from([f"Bearer {KEY}", "Bearer nope", "Basic x", ""]),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x+json", ""]),
    "Transfer-Encoding": st.sampled_from(["chunked", "gzip", "identity"]),
})
BODIES = st.one_of(st.binary(max_size=64), st.just(rows_body(ROWS)), st.just(b'{"rows": []}'))
QUERIES = st.sampled_from(["", "latest=true", "latest=maybe", "framework=%00", "a=b&a=c"])


@settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES, query=QUERIES)
def test_every_error_answer_is_json_naming_the_problem(
    app: Flask, method: str, path: str, headers: dict[str, str], body: bytes, query: str
) -> None:
    sent = {"Authorization": "", "Content-Type": "", **headers}
    status, answer_headers, document, _ = call(
        app, body, method=method, path=path, headers=sent, query=query
    )
    code = int(status[:3])
    assert code < 500
    if code >= 400 and method != "HEAD":
        assert answer_headers["Content-Type"] == "application/json"
        assert isinstance(document["error"], str) and document["error"]
    assert answer_headers["X-Trace-Id"]
