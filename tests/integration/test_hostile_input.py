"""Hostile input against real gunicorn: each gets a clear 4xx and the worker stays healthy.

After every test the same worker process (pid unchanged) still answers a normal request. Raw
sockets send what ``requests`` would not: chunked bodies without a length, lying lengths and
line breaks inside header values.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import Processes, Service, eventually
from tests.integration.raw_http import Raw

pytestmark = pytest.mark.integration

MAX_BODY = 1024 * 1024  # the default MAX_BODY_BYTES
MAX_ROWS = 1000  # the default MAX_ROWS
TRACE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")



def row(**fields: Any) -> dict[str, Any]:
    return {"inventoryId": f"{uuid.uuid4().hex[:10]}.com", "utcDatetime": "2024-10-30", **fields}


@pytest.fixture(scope="module")
def service(module_processes: Processes) -> Service:
    return module_processes.service(module_processes.simulator())


@pytest.fixture(scope="module")
def workers(service: Service) -> set[int]:
    pids = service.worker_pids()
    assert len(pids) == 1
    return pids


@pytest.fixture(autouse=True)
def worker_stays_healthy(service: Service, workers: set[int]) -> Iterator[None]:
    """After each test: a normal request is served, by the same worker process."""
    yield
    response = service.post([row()])
    assert response.status_code == 200
    assert response.json()["rows"][0]["status"] in ("fetched", "pending")
    assert service.worker_pids() == workers


def assert_json_error(response: requests.Response, status: int, *words: str) -> str:
    """``response`` is ``status`` with a JSON ``error`` mentioning each of ``words``."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    message: str = response.json()["error"]
    for word in words:
        assert word in message
    return message


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def padded_to(size: int) -> bytes:
    """A valid one-row body, padded with JSON whitespace to exactly ``size`` bytes."""
    body = json.dumps({"rows": [row()]}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


# --- size -------------------------------------------------------------------------------------


def test_a_body_of_exactly_max_body_bytes_is_served(service: Service) -> None:
    body = padded_to(MAX_BODY)
    assert len(body) == MAX_BODY
    assert service.post_body(body).status_code == 200


def test_a_body_one_byte_over_max_body_bytes_gets_413(service: Service) -> None:
    assert_json_error(service.post_body(padded_to(MAX_BODY + 1)), 413, str(MAX_BODY))


def test_a_declared_length_far_over_the_limit_gets_413_without_sending_the_body(
    service: Service,
) -> None:
    status, _, payload = Raw(service).measure(b"Content-Length: 10000000000\r\n", b"{")
    assert status == 413
    assert "error" in json.loads(payload)


def test_a_chunked_body_without_a_length_is_read_and_served(service: Service) -> None:
    body = json.dumps({"rows": [row()]}).encode()
    status, _, payload = Raw(service).measure(
        b"Transfer-Encoding: chunked\r\n", chunked(body[:7], body[7:20], body[20:])
    )
    assert status == 200
    assert len(json.loads(payload)["rows"]) == 1


def test_a_chunked_body_growing_past_the_limit_gets_413(service: Service) -> None:
    parts = [b" " * 65536] * (MAX_BODY // 65536 + 1)
    status, _, payload = Raw(service).measure(b"Transfer-Encoding: chunked\r\n", chunked(*parts))
    assert status == 413
    assert "error" in json.loads(payload)


def test_a_chunked_body_with_a_broken_chunk_size_gets_400(service: Service) -> None:
    status, _, payload = Raw(service).measure(
        b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"
    )
    assert status == 400
    assert "chunked" in json.loads(payload)["error"]


def test_a_body_cut_short_of_its_content_length_does_not_hurt_the_worker(
    service: Service,
) -> None:
    """The client hangs up mid-body; the autouse check then finds the same worker serving."""
    address = Raw(service).address
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(
            b"POST /v2/measure HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + (service.api_key or "").encode()
            + b"\r\nContent-Length: 5000\r\n\r\n{\"rows\": ["
        )


def test_ten_thousand_rows_get_400_naming_the_limit(service: Service) -> None:
    body = json.dumps({"rows": [row() for _ in range(10_000)]}).encode()
    assert len(body) < MAX_BODY
    assert_json_error(service.post_body(body), 400, "rows", str(MAX_ROWS))


def test_exactly_max_rows_rows_are_all_answered(service: Service) -> None:
    body = json.dumps({"rows": [row() for _ in range(MAX_ROWS)]}).encode()
    document = service.post_body(body).json()
    assert document["coverage"]["rows"] == MAX_ROWS


# --- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[" * 200_000, b'{"rows": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
     b'{"rows": [' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}"],
    ids=["arrays", "arrays-in-rows", "objects-in-rows"],
)
def test_deeply_nested_json_gets_400(service: Service, body: bytes) -> None:
    assert_json_error(service.post_body(body), 400, "JSON")


@pytest.mark.parametrize(
    ("body", "key"),
    [(b'{"rows": [], "rows": [{}]}', "rows"),
     (b'{"rows": [{"inventoryId": "a.com", "inventoryId": "b.com", "utcDatetime": "20241030"}]}',
      "inventoryId")],
    ids=["top-level", "in-a-row"],
)
def test_duplicate_keys_get_400_naming_the_key(service: Service, body: bytes, key: str) -> None:
    assert_json_error(service.post_body(body), 400, "duplicate", key)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E999"])
def test_nan_infinity_and_overflowing_numbers_get_400(service: Service, token: bytes) -> None:
    body = b'{"rows": [{"inventoryId": "a.com", "utcDatetime": "20241030", "impressions": %s}]}'
    assert_json_error(service.post_body(body % token), 400, "JSON")


def test_an_integer_of_thousands_of_digits_gets_400(service: Service) -> None:
    body = b'{"rows": [{"inventoryId": "a.com", "utcDatetime": "20241030", "impressions": %s}]}'
    assert_json_error(service.post_body(body % (b"9" * 5000)), 400, "JSON")


@pytest.mark.parametrize("field", ["impressions", "weight"])
def test_a_huge_but_valid_json_integer_makes_the_row_invalid_naming_the_field(
    service: Service, field: str
) -> None:
    body = json.dumps({"rows": [row(**{field: 10**40})]}).encode()
    answered = service.post_body(body).json()["rows"][0]
    assert answered["status"] == "invalid"
    assert field in answered["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [b'{"rows": [{"inventoryId": "\xff\xfe.com", "utcDatetime": "2024-10-30"}]}',
     b'{"rows": [{"inventoryId": "caf\xe9.com", "utcDatetime": "2024-10-30"}]}',
     b'\xc0\xaf{"rows": []}', b'{"rows": [{"inventoryId": "\xed\xa0\x80"}]}'],
    ids=["invalid-bytes", "latin-1", "overlong", "surrogate"],
)
def test_non_utf8_bytes_get_400(service: Service, body: bytes) -> None:
    assert_json_error(service.post_body(body), 400, "JSON")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "application/jsonp", ""],
)
def test_a_content_type_that_is_not_json_gets_415(service: Service, content_type: str) -> None:
    body = json.dumps({"rows": [row()]}).encode()
    assert_json_error(service.post_body(body, content_type), 415, "Content-Type")


def test_a_missing_content_type_gets_415(service: Service) -> None:
    body = json.dumps({"rows": [row()]}).encode()
    head = (b"POST /v2/measure HTTP/1.1\r\nHost: t\r\n" + Raw(service).auth
            + b"Content-Length: %d\r\n" % len(body))
    status, _, payload = Raw(service).exchange(head, body)
    assert status == 415
    assert "Content-Type" in json.loads(payload)["error"]


# --- trace ids --------------------------------------------------------------------------------


def test_a_well_formed_trace_id_is_kept(service: Service) -> None:
    trace_id = "A" * 100 + "._-0123456789"
    response = service.post([row()], headers={"X-Trace-Id": trace_id})
    assert response.headers["X-Trace-Id"] == trace_id
    assert response.json()["requestId"] == trace_id


@pytest.mark.parametrize(
    "trace_id",
    ["a" * 129, "has space", "semi;colon", "quote\"d", "{json}", "%0d%0aX-Evil:%201", ""],
    ids=["129-chars", "space", "semicolon", "quote", "braces", "encoded-crlf", "empty"],
)
def test_a_malformed_trace_id_is_replaced_by_a_new_one(service: Service, trace_id: str) -> None:
    response = service.post([row()], headers={"X-Trace-Id": trace_id})
    replaced = response.headers["X-Trace-Id"]
    assert replaced != trace_id and TRACE_ID.fullmatch(replaced)
    assert response.json()["requestId"] == replaced


@pytest.mark.parametrize(
    "value", ["caf\u00e9".encode(), "\u2603-snow".encode(), b"\xff\xfe", "\u202e".encode()],
    ids=["latin-1", "utf-8", "invalid-utf-8", "bidi-override"],
)
def test_a_non_ascii_trace_id_is_replaced(service: Service, value: bytes) -> None:
    body = json.dumps({"rows": [row()]}).encode()
    status, headers, _ = Raw(service).measure(
        b"X-Trace-Id: " + value + b"\r\nContent-Length: %d\r\n" % len(body), body
    )
    assert status == 200
    assert TRACE_ID.fullmatch(headers["x-trace-id"])


@pytest.mark.parametrize(
    "value",
    [b"ok\rX-Injected: 1", b"ok\nX-Injected: 1", b"ok\r\n X-Injected: 1", b"ok\x00X-Injected"],
    ids=["cr", "lf", "obs-fold", "nul"],
)
def test_line_breaks_in_a_trace_id_inject_no_header_and_no_log_line(
    service: Service, value: bytes
) -> None:
    marker = f"inject-{uuid.uuid4().hex}"
    body = json.dumps({"rows": [row()]}).encode()
    status, headers, _ = Raw(service).measure(
        b"X-Trace-Id: " + value.replace(b"X-Injected", marker.encode())
        + b"\r\nContent-Length: %d\r\n" % len(body),
        body,
    )
    # gunicorn may refuse the request outright (400); if served, the id was replaced.
    assert status in (200, 400)
    assert marker.lower() not in headers
    if status == 200:
        assert TRACE_ID.fullmatch(headers["x-trace-id"])
    for line in service.log_path.read_text(errors="replace").splitlines():
        if marker in line:
            assert json.loads(line)  # inside one JSON line, never a line of its own
    for document in service.log_lines():
        trace_id = document.get("trace_id")
        assert trace_id is None or TRACE_ID.fullmatch(trace_id)


# --- limits enforced by gunicorn itself (its own plain-text error pages, before the app) --------


def test_an_oversized_header_gets_431(service: Service) -> None:
    status, _, _ = Raw(service).measure(b"X-Padding: " + b"a" * 20_000 + b"\r\n", b"{}")
    assert status == 431


def test_an_oversized_request_line_gets_414(service: Service) -> None:
    head = b"POST /v2/measure?framework=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n"
    status, _, _ = Raw(service).exchange(head, b"")
    assert status == 414


def test_a_transfer_coding_other_than_chunked_gets_400(service: Service) -> None:
    status, _, _ = Raw(service).measure(b"Transfer-Encoding: gzip\r\n", b"{}")
    assert status == 400


def test_line_breaks_in_the_path_stay_inside_one_json_log_line(service: Service) -> None:
    marker = f"inject-{uuid.uuid4().hex}"
    response = requests.get(f"{service.url}/nowhere%0d%0a{marker}%0a", timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()

    def marked_lines() -> list[str]:
        # The access line is written just after the response: poll rather than race it.
        text = service.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if marker in line]

    lines = eventually(marked_lines)
    assert all(json.loads(line) for line in lines)


def test_a_body_in_more_chunks_than_its_bound_gets_a_json_400_naming_it(service: Service) -> None:
    body = padded_to(20_000)
    parts = [body[i:i + 4] for i in range(0, len(body), 4)]  # 5,000 chunks; the bound is 4,096
    status, _, payload = Raw(service).measure(b"Transfer-Encoding: chunked\r\n", chunked(*parts))
    assert status == 400
    assert "chunks" in json.loads(payload)["error"]


def test_a_body_in_as_many_chunks_as_its_bound_is_served(service: Service) -> None:
    body = padded_to(4096 * 4)
    parts = [body[i:i + 4] for i in range(0, len(body), 4)]
    status, _, _ = Raw(service).measure(b"Transfer-Encoding: chunked\r\n", chunked(*parts))
    assert status == 200
