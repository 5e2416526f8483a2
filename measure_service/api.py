"""The HTTP surface: POST /v2/measure, /healthcheck and /readyz, auth, JSON errors.

HTTP in and out only: validation lives in ``rows``, caching and fetching in ``fetcher``, trace
ids and HTTP metrics in ``request_telemetry``. :class:`MeasureEndpoint` is the one door of
``POST /v2/measure``: a plain WSGI handler that gives every answer of that path, each gate
written once. Flask serves the other routes (health, readiness, OpenAPI, metrics) and answers
their errors as JSON too.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import IO, Any

import gevent
import orjson
from flask import Blueprint, Response, current_app
from gevent import getcurrent
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request as WerkzeugRequest

from measure_service import logs
from measure_service.config import Config
from measure_service.fetcher import Fetcher, RowOutcome
from measure_service.rows import (
    ROW_STATUSES,
    BodyError,
    QueryParams,
    Row,
    RowKey,
    parse_body,
    parse_query,
    validate_row,
)

EXTENSION = "measure_service"
MEASURE_PATH = "/v2/measure"
# Set by the server (``gunicorn_worker.GeventWorker``): closes the current request's connection
# after its answer.
CLOSE_CONNECTION = "measure_service.close_connection"
_LOG = logging.getLogger(__name__)
_JSON = "application/json"
_INVALID = RowOutcome("invalid")
_NO_STATUSES: dict[str, int] = dict.fromkeys(ROW_STATUSES, 0)
_NO_QUERY = QueryParams(None, None)
_ALLOW = "OPTIONS, POST"
_UNREADABLE = "body could not be read (broken chunked encoding or cut short)"
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Services:
    """What the views need from one app: its config, fetcher and a readiness probe.

    ``not_ready`` returns why this worker cannot serve (for example upstream refused our token),
    or None when it can. ``shared_status`` says how the shared tier is: ``off``, ``ok``, or
    ``degraded`` with a reason (the worker still serves: Redis is an accelerator). The
    repr leaves out the client keys.
    """

    config: Config
    fetcher: Fetcher
    not_ready: Callable[[], str | None]
    auth_keys: tuple[bytes, ...] = field(repr=False)
    shared_status: Callable[[], tuple[str, str | None]] = lambda: ("off", None)


bp = Blueprint("measure", __name__)


def _services() -> Services:
    services: Services = current_app.extensions[EXTENSION]
    return services


def _json(document: Any, status: int = 200) -> Response:
    return Response(_encode(document), status=status, mimetype=_JSON)


def _encode(document: Any) -> bytes:
    """The JSON body. Upstream's own text in it was redacted of our token when it was parsed."""
    try:
        # orjson: the answer's encoding is a large part of a hit's cost with json.
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
    """Readiness: 200 once this worker can serve, else 503 with the reason.

    The body also says how the shared tier is (``sharedTier``); a degraded tier stays 200.
    """
    services = current_app.extensions.get(EXTENSION)
    if services is None:
        return _json({"status": "unavailable", "reason": "the worker is starting or stopping"}, 503)
    reason = services.not_ready()
    if reason is not None:
        return _json({"status": "unavailable", "reason": reason}, 503)
    tier, why = services.shared_status()
    body: dict[str, Any] = {"status": "ready", "sharedTier": tier}
    if why is not None:
        body["sharedTierReason"] = why
    return _json(body)


def _answer(
    services: Services,
    params: QueryParams,
    raw_rows: list[Any],
    environ: dict[str, Any],
    tenant: str,
) -> bytes:
    """The encoded 200 answer to a valid request from ``tenant``; records the access log's
    counts."""
    rows: list[Row] = []
    keys: list[RowKey] = []
    costs: list[float] = []
    for raw in raw_rows:
        row = validate_row(raw, params)
        rows.append(row)
        if row.key is not None:
            keys.append(row.key)
            costs.append(row.cost)
    lookup = services.fetcher.lookup(keys, costs, services.config.wait_s, tenant)

    environ[logs.ENVIRON_ROWS] = len(rows)
    environ[logs.ENVIRON_HITS] = lookup.hits
    environ[logs.ENVIRON_MISSES] = lookup.misses
    return _encode(_document(rows, iter(lookup.outcomes), environ.get(logs.ENVIRON_TRACE_ID)))


class HttpError(Exception):
    """A request refused with ``status`` and a JSON ``{"error": message}`` body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class TooManyChunks(Exception):
    """The server stopped reading a chunked body past its bound on chunks (the argument)."""


class _BodyTimeout(Exception):
    """The client did not send its whole body within BODY_TIMEOUT_MS."""


class _BodyReads:
    """The body reads under way in this process, each with its deadline.

    One watcher greenlet, alive while reads are under way, wakes every ``tick_s`` and interrupts
    the reads past their deadline: a timer per request would cost more than most reads, which
    find the body already received. A deadline is kept within one tick.
    """

    def __init__(self, tick_s: float) -> None:
        """Check the deadlines every ``tick_s`` seconds."""
        self._tick_s = tick_s
        self._deadlines: dict[Any, float] = {}  # by greenlet
        self._watching = False

    def start(self, timeout_s: float) -> None:
        """The current greenlet starts reading a body, to be done within ``timeout_s``."""
        self._deadlines[getcurrent()] = time.monotonic() + timeout_s
        if not self._watching:
            self._watching = True
            gevent.spawn(self._watch)

    def finish(self) -> None:
        """The current greenlet is done reading (whether it got the body or not)."""
        self._deadlines.pop(getcurrent(), None)

    def _watch(self) -> None:
        try:
            while self._deadlines:
                gevent.sleep(self._tick_s)
                now = time.monotonic()
                late = [reader for reader, at in self._deadlines.items() if at <= now]
                for reader in late:
                    # From the hub, as gevent.Timeout does, and only if still reading then.
                    gevent.get_hub().loop.run_callback(self._interrupt, reader, now)
        finally:
            self._watching = False

    def _interrupt(self, reader: Any, now: float) -> None:
        deadline = self._deadlines.get(reader)
        if deadline is not None and deadline <= now:
            del self._deadlines[reader]
            reader.throw(_BodyTimeout())


_READS = _BodyReads(tick_s=0.05)


class MeasureEndpoint:
    """The one door of ``POST /v2/measure``: every answer of that path comes from here.

    The gates run in order: method, readiness, auth, content type, transfer coding, length, the
    body (read once, under a total deadline), the query string, then the body's JSON (parsed
    once). Any other path goes to ``other`` (the Flask app).
    """

    def __init__(self, extensions: Mapping[str, Any], other: WSGIApp) -> None:
        """Serve with the :class:`Services` found in ``extensions``; pass other paths on."""
        self._extensions = extensions
        self._other = other

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer a request for ``/v2/measure``, or hand any other path to ``other``."""
        if environ.get("PATH_INFO") != MEASURE_PATH:
            return self._other(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", _ALLOW), ("Content-Length", "0")])
            return []
        headers: dict[str, str] = {}
        try:
            body = self._serve(method, environ)
            status = 200
        except HttpError as exc:
            status, body, headers = exc.status, _encode({"error": exc.message}), exc.headers
        except Exception:
            # The stack trace goes to the log under the trace id, never to the client.
            _LOG.exception("unhandled error")
            status, body = 500, _encode({"error": "internal error"})
        sent = [("Content-Type", _JSON), ("Content-Length", str(len(body))), *headers.items()]
        start_response(_STATUS_LINES[status], sent)
        return [] if method == "HEAD" else [body]

    def _serve(self, method: str | None, environ: dict[str, Any]) -> bytes:
        """The 200 answer's body; raises HttpError for a request refused at one of the gates."""
        if method != "POST":
            raise HttpError(405, "method not allowed: use POST", {"Allow": _ALLOW})
        services: Services | None = self._extensions.get(EXTENSION)
        if services is None:
            raise HttpError(503, "the worker is starting or stopping")
        tenant = _tenant(services.auth_keys, environ.get("HTTP_AUTHORIZATION", ""))
        if tenant is None:
            raise HttpError(
                401, "missing or invalid API key", {"WWW-Authenticate": 'Bearer realm="measure"'}
            )
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type != _JSON and not _is_json(content_type):
            raise HttpError(415, "Content-Type must be application/json")
        config = services.config
        try:
            body = _read_body(environ, config.max_body_bytes, config.body_timeout_ms / 1000)
        except _BodyTimeout:
            # The rest of the body may still come: it must not be read as the next request.
            close_connection = self._extensions.get(CLOSE_CONNECTION)
            if close_connection is not None:
                close_connection()
            raise HttpError(
                408, f"the body did not arrive within {config.body_timeout_ms} ms",
                {"Connection": "close"},
            ) from None
        try:
            # werkzeug's own query parsing, as Flask's ``request.args``, without a context.
            query = WerkzeugRequest(environ).args if environ.get("QUERY_STRING") else None
            params = _NO_QUERY if query is None else parse_query(query)
            raw_rows = parse_body(body, config.max_rows)
        except BodyError as exc:
            raise HttpError(400, str(exc)) from None
        return _answer(services, params, raw_rows, environ, tenant)


def _read_body(environ: dict[str, Any], limit: int, timeout_s: float) -> bytes:
    """The whole body within ``limit`` bytes, else HttpError; _BodyTimeout after ``timeout_s``."""
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is not None and coding.strip().lower() != "chunked":
        raise HttpError(400, "Transfer-Encoding must be chunked (or absent)")
    length_text = environ.get("CONTENT_LENGTH") or ""
    length: int | None = None
    if length_text:
        if not (length_text.isascii() and length_text.isdigit()):
            raise HttpError(400, "Content-Length must be a number of bytes")
        length = int(length_text)
        if length > limit:
            raise HttpError(413, f"body is larger than {limit} bytes")
    stream: IO[bytes] = environ["wsgi.input"]
    _READS.start(timeout_s)
    try:
        body = _read_at_most(stream, limit + 1 if length is None else length)
    except _BodyTimeout:
        raise
    except TooManyChunks as exc:
        raise HttpError(
            400, f"chunked body in more than {exc.args[0]} chunks: send larger chunks"
        ) from None
    except Exception:
        # The server's reader raises its own types for broken chunked framing or a lost
        # client; either way the body is unusable, and the client's fault.
        raise HttpError(400, _UNREADABLE) from None
    finally:
        _READS.finish()
    if length is None and len(body) > limit:
        raise HttpError(413, f"body is larger than {limit} bytes")
    if length is not None and len(body) < length:
        raise HttpError(400, _UNREADABLE)
    return body


def _read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Read until ``size`` bytes or the end of the stream, whichever comes first."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _document(
    rows: list[Row], outcomes: Iterator[RowOutcome], request_id: str | None
) -> dict[str, Any]:
    coverage: dict[str, int] = {"rows": len(rows), **_NO_STATUSES}
    out_rows = []
    total = 0.0
    for row_identifier, property_name, date, weight, key, error, _ in rows:
        status, entry, reason = _INVALID if key is None else next(outcomes)
        coverage[status] += 1
        item: dict[str, Any] = {
            "rowIdentifier": row_identifier,
            "propertyName": property_name,
            "utcDateTime": date,
            "weight": weight,
            "totalEmissions": None,
            "status": status,
        }
        if reason is not None:
            item["reason"] = reason
        if error is not None:
            item["error"] = {"message": error}
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
        "requestId": request_id,
        "totalEmissions": total,
        "rows": out_rows,
        "coverage": coverage,
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


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type header names JSON (any case, parameters and spaces allowed)."""
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == _JSON or (mimetype.startswith("application/") and mimetype.endswith("+json"))


class MetricsListener:
    """WSGI wrapper giving ``/metrics`` its own port: served there, and only there.

    gunicorn sets ``SERVER_PORT`` to the port of the listener that accepted the connection (not
    from the Host header), so a client cannot reach one listener's routes through the other.
    """

    def __init__(self, app: WSGIApp, metrics_port: int, path: str = "/metrics") -> None:
        """Serve ``path`` from ``app`` on ``metrics_port`` only; other routes on other ports."""
        self._app = app
        self._port = str(metrics_port)
        self._path = path

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Pass the request on, or answer a JSON 404 when it came in on the wrong listener."""
        on_metrics_port = environ.get("SERVER_PORT") == self._port
        if on_metrics_port == (environ.get("PATH_INFO") == self._path):
            return self._app(environ, start_response)
        body = _encode({"error": "not found"})
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(body)))]
        start_response("404 NOT FOUND", headers)
        return [body]

