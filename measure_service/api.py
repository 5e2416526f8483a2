"""The HTTP surface: POST /v2/measure, /healthcheck and /readyz, auth, JSON errors.

HTTP in and out only: validation lives in ``rows``, caching and fetching in ``fetcher``, trace
ids and HTTP metrics in ``bookkeeping``. :class:`HotPath` answers the usual measure request
without Flask; the Flask view answers the rest, and gives every error answer.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request as WerkzeugRequest

from measure_service import logs
from measure_service.config import Config
from measure_service.fetcher import Fetcher, Outcome
from measure_service.rows import BodyError, QueryParams, Row, parse_body, parse_query, validate_row

EXTENSION = "measure_service"
STATUSES = ("hit", "fetched", "stale", "pending", "error", "unavailable", "invalid")
_LOG = logging.getLogger(__name__)
_JSON = "application/json"
_INVALID = Outcome("invalid")
_NO_QUERY = QueryParams(None, None)
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Services:
    """What the views need from one app: its config, fetcher and a readiness probe.

    ``not_ready`` returns why this worker cannot serve (for example upstream refused our token),
    or None when it can.
    """

    config: Config
    fetcher: Fetcher
    not_ready: Callable[[], str | None]
    auth_keys: tuple[bytes, ...]


bp = Blueprint("measure", __name__)


def _services() -> Services:
    services: Services = current_app.extensions[EXTENSION]
    return services


def _json(document: Any, status: int = 200) -> Response:
    return Response(_encode(document), status=status, mimetype=_JSON)


def _encode(document: Any) -> bytes:
    """The JSON body. Upstream's own text in it was redacted of our token when it was parsed."""
    try:
        # orjson encodes a 5-row answer about 5x faster than json, the floor's encoder.
        body = orjson.dumps(document)
    except TypeError:
        # It refuses integers beyond 64 bits, which a client's rowIdentifier may be.
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    return body


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    response = _error(code, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name == "Allow":
            response.headers[name] = value
    return response


@bp.app_errorhandler(Exception)
def _unexpected_error(exc: Exception) -> Response:
    # The stack trace goes to the log under the trace id, never to the client.
    _LOG.exception("unhandled error")
    return _error(500, "internal error")


@bp.get("/healthcheck")
def healthcheck() -> Response:
    """Liveness: the process answers."""
    config = _services().config
    return _json(
        {
            "environment": config.env,
            "service": config.service,
            "version": config.version,
            "status": "ok",
        }
    )


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: 200 once this worker can serve, else 503 with the reason."""
    services = current_app.extensions.get(EXTENSION)
    if services is None:
        return _json({"status": "unavailable", "reason": "the worker is starting or stopping"}, 503)
    reason = services.not_ready()
    if reason is not None:
        return _json({"status": "unavailable", "reason": reason}, 503)
    return _json({"status": "ready"})


@bp.post("/v2/measure")
def measure() -> Response:
    """Answer every row from the cache or upstream, in request order."""
    services = _services()
    config = services.config
    environ = request.environ  # read once: each ``request.`` is a context-local lookup
    tenant = _tenant(services.auth_keys, environ.get("HTTP_AUTHORIZATION", ""))
    if tenant is None:
        response = _error(401, "missing or invalid API key")
        response.headers["WWW-Authenticate"] = 'Bearer realm="measure"'
        return response
    if not _is_json(request.mimetype):
        return _error(415, "Content-Type must be application/json")
    try:
        body = _read_body(config.max_body_bytes)
        if body is None:
            return _error(413, f"body is larger than {config.max_body_bytes} bytes")
        # Most requests have no query string: skip building werkzeug's MultiDict for them.
        params = parse_query(request.args) if environ.get("QUERY_STRING") else _NO_QUERY
        raw_rows = parse_body(body, config.max_rows)
    except BodyError as exc:
        return _error(400, str(exc))
    return Response(_answer(services, params, raw_rows, environ, tenant), mimetype=_JSON)


def _answer(
    services: Services,
    params: QueryParams,
    raw_rows: list[Any],
    environ: dict[str, Any],
    tenant: str,
) -> bytes:
    """The encoded 200 answer to a valid request; records the counts for the access log."""
    config = services.config
    rows = [validate_row(raw, params) for raw in raw_rows]
    wanted = [(row.key, row.cost) for row in rows if row.key is not None]
    lookup = services.fetcher.lookup(wanted, config.wait_s, tenant)

    environ[logs.ENVIRON_ROWS] = len(rows)
    environ[logs.ENVIRON_HITS] = lookup.hits
    environ[logs.ENVIRON_MISSES] = lookup.misses
    return _encode(_document(rows, iter(lookup.outcomes)))


class HotPath:
    """WSGI wrapper answering the usual ``POST /v2/measure`` without Flask's per-request work.

    Flask's request context, URL adapter, routing and Response objects cost about 90 us of a
    5-row hit request; this does the same work as :func:`measure` with plain WSGI. Anything
    unusual (auth failure, other content type, no or too large Content-Length, a bad query
    string or body) goes to Flask, so every error answer comes from one place.
    """

    def __init__(self, app: Flask, flask_wsgi: WSGIApp) -> None:
        """Serve ``app``'s hot route; hand everything else to ``flask_wsgi``."""
        self._extensions = app.extensions
        self._flask = flask_wsgi

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer a plain valid measure request here, or pass the request to Flask."""
        services: Services | None = self._extensions.get(EXTENSION)
        if (
            services is None
            or environ.get("PATH_INFO") != "/v2/measure"
            or environ.get("REQUEST_METHOD") != "POST"
            or (tenant := _tenant(services.auth_keys, environ.get("HTTP_AUTHORIZATION", "")))
            is None
            or not _is_json(environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower())
            or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            return self._flask(environ, start_response)
        length_text = environ.get("CONTENT_LENGTH", "")
        if not (length_text.isascii() and length_text.isdigit()) or (
            int(length_text) > services.config.max_body_bytes
        ):
            return self._flask(environ, start_response)
        body = b""
        try:
            body = environ["wsgi.input"].read(int(length_text))
            # werkzeug's own parsing, as Flask's ``request.args``, without a request context.
            query = WerkzeugRequest(environ).args if environ.get("QUERY_STRING") else None
            params = _NO_QUERY if query is None else parse_query(query)
            raw_rows = parse_body(body, services.config.max_rows)
        except Exception:
            # Flask reads the body again (what could be read of it) and gives the error answer.
            environ["wsgi.input"] = io.BytesIO(body)
            return self._flask(environ, start_response)
        try:
            answer = _answer(services, params, raw_rows, environ, tenant)
            status = "200 OK"
        except Exception:
            # As _unexpected_error: the stack trace goes to the log, never to the client.
            _LOG.exception("unhandled error")
            answer, status = _encode({"error": "internal error"}), "500 INTERNAL SERVER ERROR"
        start_response(status, [("Content-Type", _JSON), ("Content-Length", str(len(answer)))])
        return [answer]


def _document(rows: list[Row], outcomes: Iterator[Outcome]) -> dict[str, Any]:
    coverage = dict.fromkeys(STATUSES, 0)
    out_rows = []
    total = 0.0
    for row in rows:
        outcome = _INVALID if row.key is None else next(outcomes)
        coverage[outcome.status] += 1
        item: dict[str, Any] = {
            "rowIdentifier": row.row_identifier,
            "propertyName": row.property_name,
            "utcDateTime": row.date,
            "weight": row.weight,
            "totalEmissions": None,
            "status": outcome.status,
        }
        entry = outcome.entry
        if outcome.reason is not None:
            item["reason"] = outcome.reason
        if row.error is not None:
            item["error"] = {"message": row.error}
        elif entry is not None:
            if entry.error is not None:
                item["error"] = {"message": entry.error}
            else:
                item["totalEmissions"] = entry.total_emissions
                item["inventoryCoverage"] = entry.inventory_coverage
                if entry.total_emissions is not None:
                    total += entry.total_emissions
        out_rows.append(item)
    return {
        "requestId": logs.current_trace_id(),
        "totalEmissions": total,
        "rows": out_rows,
        "coverage": {"rows": len(rows), **coverage},
    }


def _tenant(keys: tuple[bytes, ...], header: str) -> str | None:
    """The client (tenant) whose key the Authorization ``header`` carries, or None if none.

    A tenant is named by its key's position in ``API_KEYS`` (``key-1``, ...), never by the key;
    without authentication every request is the one tenant ``anonymous``.
    """
    if not keys:
        return "anonymous"  # AUTH_DISABLED=true; Config refuses an empty key list otherwise
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    presented = token.strip().encode()
    # Compare against every key, without stopping early, so timing says nothing about which.
    matched = 0
    for position, key in enumerate(keys, 1):
        if hmac.compare_digest(presented, key):
            matched = matched or position
    return f"key-{matched}" if matched else None


def _is_json(mimetype: str) -> bool:
    return mimetype == _JSON or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def _read_body(limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (by Content-Length or by what was read).

    Raises BodyError when the body cannot be read.
    """
    length = request.content_length
    if length is not None and length > limit:
        return None
    try:
        if length is not None:
            # One read from the server's own stream: werkzeug's wrapping streams cost ~10 us.
            body: bytes = request.environ["wsgi.input"].read(length)
            return body
        return _read_chunked(request.stream, limit)
    except Exception:
        # The server's reader raises its own types for broken chunked framing or a lost
        # client; either way the body is unusable, and the client's fault.
        raise BodyError("body could not be read (broken chunked encoding or cut short)") from None


def _read_chunked(stream: IO[bytes], limit: int) -> bytes | None:
    """A body without Content-Length: read at most one byte past ``limit`` to detect excess."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)
