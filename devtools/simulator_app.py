"""The simulator as a WSGI app: its routes, answers with the faults applied, and its counts."""

from __future__ import annotations

import dataclasses
import errno
import hmac
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from devtools.simulator_answers import measure_row, row_key
from devtools.simulator_faults import POISON_OUTCOMES, Faults, spoil

# The WSGI environ key under which the gevent handler offers to reset the connection.
RESET_HOOK = "measure_simulator.reset_connection"
# Bounds so that a long load test cannot grow the simulator without limit.
RECENT_LOG_SIZE = 10_000
MAX_TRACKED_KEYS = 200_000
MAX_BODY_BYTES = 32 * 1024 * 1024
HANG_LIMIT_S = 600.0
SLOW_BODY_PIECES = 20
SLOW_BODY_GAP_S = 0.25
_JSON_HEADERS = [("Content-Type", "application/json")]


class _Event(Protocol):
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


StartResponse = Callable[..., Any]
_Handler = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Scope3Simulator:
    """The simulator as a WSGI application; thread- and greenlet-safe."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        token: str | None = None,
        seed: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        event_factory: Callable[[], _Event] = threading.Event,
    ) -> None:
        """Serve with ``faults`` (also what ``/_reset`` restores); check ``token`` if given.

        Under gevent, pass ``gevent.sleep`` and ``gevent.event.Event`` so that waits yield.
        """
        self._defaults = faults if faults is not None else Faults()
        self._token = token
        self._seed = seed
        self._sleep = sleep
        self._clock = clock
        self._event_factory = event_factory
        # Never held across a wait: it only guards counters, settings and the random source.
        self._lock = threading.Lock()
        self._faults = self._defaults
        self._rng = random.Random(seed)
        self._release = event_factory()
        self._requests = 0
        self._rows = 0
        self._rows_answered = 0
        self._by_status: Counter[str] = Counter()
        self._rows_per_key: Counter[str] = Counter()
        # Per User-Agent (one per service worker): "each key at most once per worker" checks.
        self._rows_per_agent_key: Counter[tuple[str, str]] = Counter()
        self._repeated_keys_by_agent: Counter[str] = Counter()
        self._keys_truncated = False
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_LOG_SIZE)
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight = 0
        self._max_in_flight_by_agent: Counter[str] = Counter()
        self._busy_s_by_agent: dict[str, float] = {}
        self._routes: dict[str, tuple[frozenset[str], _Handler]] = {
            "/v2/measure": (frozenset({"POST"}), self._measure),
            "/_stats": (frozenset({"GET"}), self._stats),
            "/_control": (frozenset({"GET", "POST"}), self._control),
            "/_reset": (frozenset({"POST"}), self._reset),
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Route one request."""
        path = environ.get("PATH_INFO", "")
        route = self._routes.get(path)
        if route is None:
            return _json(start_response, 404, {"message": f"no route {path}"})
        methods, handler = route
        if environ.get("REQUEST_METHOD", "GET") not in methods:
            allow = ", ".join(sorted(methods))
            return _json(start_response, 405, {"message": f"use {allow} for {path}"},
                         [("Allow", allow)])
        return handler(environ, start_response)

    # --- /v2/measure ---------------------------------------------------------------------------

    def _measure(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        arrived = self._clock()
        agent = environ.get("HTTP_USER_AGENT", "")
        if self._token is not None and not _bearer_matches(
            environ.get("HTTP_AUTHORIZATION", ""), self._token
        ):
            self._record(arrived, agent, [], {}, "401")
            return _json(start_response, 401, {"message": "invalid or missing API token"},
                         [("WWW-Authenticate", "Bearer")])
        params = {name: values[-1]
                  for name, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            rows = _read_rows(environ)
        except _BadRequest as exc:
            self._record(arrived, agent, [], params, str(exc.status))
            return _json(start_response, exc.status, {"message": str(exc)})

        with self._lock:
            faults = self._faults
            outcome = self._draw_outcome(faults)
            delay_s = self._draw_delay(faults)
            release = self._release
        poison = faults.poison(rows) if outcome in ("ok", "slow_body", "malformed") else None
        if poison is not None:
            kind, _ = poison
            outcome = POISON_OUTCOMES.get(kind, outcome)
            if kind == "slow":
                delay_s += faults.poison_slow_ms / 1000.0
        status = {"hang": "hang", "reset": "reset", "500": "500", "429": "429",
                  "400": "400"}.get(outcome, "200")
        self._record(arrived, agent, rows, params, status)
        self._enter(agent)
        started = self._clock()
        try:
            return self._answer(environ, start_response, rows, params, outcome, delay_s,
                                faults, release, poison)
        finally:
            self._leave(agent, self._clock() - started)

    def _enter(self, agent: str) -> None:
        with self._lock:
            self._in_flight[agent] += 1
            self._max_in_flight = max(self._max_in_flight, sum(self._in_flight.values()))
            self._max_in_flight_by_agent[agent] = max(
                self._max_in_flight_by_agent[agent], self._in_flight[agent]
            )

    def _leave(self, agent: str, busy_s: float) -> None:
        with self._lock:
            self._busy_s_by_agent[agent] = self._busy_s_by_agent.get(agent, 0.0) + busy_s
            self._in_flight[agent] -= 1
            if not self._in_flight[agent]:
                del self._in_flight[agent]

    def _answer(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        rows: list[dict[str, Any]],
        params: dict[str, str],
        outcome: str,
        delay_s: float,
        faults: Faults,
        release: _Event,
        poison: tuple[str, int] | None = None,
    ) -> Iterable[bytes]:
        if outcome == "hang":
            release.wait(HANG_LIMIT_S)
            return _json(start_response, 504, {"message": "simulated hang ended"})
        if outcome == "reset":
            reset = environ.get(RESET_HOOK)
            if reset is not None:
                reset()
            raise ConnectionResetError(errno.ECONNRESET, "simulated connection reset")
        self._sleep(delay_s)
        if outcome == "500":
            return _json(start_response, 500, {"message": "simulated upstream failure"})
        if outcome == "400":
            return _json(start_response, 400, {"message": "a row of the request is invalid"})
        if outcome == "429":
            return _json(start_response, 429, {"message": "simulated rate limit"},
                         [("Retry-After", _format_seconds(faults.retry_after))])
        if outcome == "malformed":
            body = b'{"requestId": "truncated", "rows": [{"rowIdent'
            start_response("200 OK", [*_JSON_HEADERS, ("Content-Length", str(len(body)))])
            return [body]

        answered = spoil([measure_row(row, params) for row in rows], poison)
        document = {
            "requestId": str(uuid.uuid4()),
            "totalEmissions": round(sum(row["totalEmissions"] or 0.0 for row in answered), 6),
            "rows": answered,
        }
        with self._lock:
            self._rows_answered += len(answered)
        body = json.dumps(document).encode()
        if outcome == "slow_body":
            start_response("200 OK", list(_JSON_HEADERS))
            return self._trickle(body)
        start_response("200 OK", [*_JSON_HEADERS, ("Content-Length", str(len(body)))])
        return [body]

    def _draw_outcome(self, faults: Faults) -> str:
        if faults.mode != "ok":
            return faults.mode
        # One draw per request keeps the sequence of outcomes reproducible for a given seed.
        draw = self._rng.random()
        for outcome, rate in (("hang", faults.hang_rate), ("500", faults.error_rate),
                              ("429", faults.status_429_rate)):
            if draw < rate:
                return outcome
            draw -= rate
        return "ok"

    def _draw_delay(self, faults: Faults) -> float:
        jitter = self._rng.uniform(-faults.jitter_ms, faults.jitter_ms) if faults.jitter_ms else 0.0
        return max(0.0, faults.latency_ms + jitter) / 1000.0

    def _trickle(self, body: bytes) -> Iterator[bytes]:
        piece = max(1, math.ceil(len(body) / SLOW_BODY_PIECES))
        for start in range(0, len(body), piece):
            if start:
                self._sleep(SLOW_BODY_GAP_S)
            yield body[start:start + piece]

    def _record(
        self,
        arrived: float,
        agent: str,
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, str],
        status: str,
    ) -> None:
        keys = [row_key(row, params) for row in rows]
        with self._lock:
            self._requests += 1
            self._rows += len(rows)
            self._by_status[status] += 1
            for key in keys:
                if key in self._rows_per_key or len(self._rows_per_key) < MAX_TRACKED_KEYS:
                    self._rows_per_key[key] += 1
                    self._rows_per_agent_key[agent, key] += 1
                    if self._rows_per_agent_key[agent, key] == 2:
                        self._repeated_keys_by_agent[agent] += 1
                else:
                    self._keys_truncated = True
            self._recent.append(
                {"time": arrived, "user_agent": agent, "rows": len(rows), "status": status}
            )

    # --- control endpoints ---------------------------------------------------------------------

    def _stats(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        with self._lock:
            document: dict[str, Any] = {
                "requests": self._requests,
                "rows": self._rows,
                "rows_answered": self._rows_answered,
                "by_status": dict(self._by_status),
                "keys_truncated": self._keys_truncated,
                "repeated_keys_by_agent": dict(self._repeated_keys_by_agent),
                "max_in_flight": self._max_in_flight,
                "control": dataclasses.asdict(self._faults),
            }
            if query.get("keys", ["1"])[-1] != "0":
                document["rows_per_key"] = dict(self._rows_per_key)
            if query.get("by_agent", ["0"])[-1] == "1":
                by_agent: dict[str, dict[str, int]] = {}
                for (agent, key), count in self._rows_per_agent_key.items():
                    by_agent.setdefault(agent, {})[key] = count
                document["rows_per_key_by_agent"] = by_agent
                document["max_in_flight_by_agent"] = dict(self._max_in_flight_by_agent)
                document["busy_s_by_agent"] = dict(self._busy_s_by_agent)
            if query.get("recent", ["1"])[-1] != "0":
                document["recent"] = list(self._recent)
        return _json(start_response, 200, document)

    def _control(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                changes = json.loads(_read_body(environ) or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                faults = self._faults.updated(changes)
            except (ValueError, _BadRequest) as exc:
                return _json(start_response, 400, {"message": str(exc)})
            with self._lock:
                self._faults = faults
                self._release_hangs()
        with self._lock:
            current = dataclasses.asdict(self._faults)
        return _json(start_response, 200, {"control": current})

    def _reset(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            self._faults = self._defaults
            self._rng = random.Random(self._seed)
            self._requests = self._rows = self._rows_answered = 0
            self._by_status.clear()
            self._rows_per_key.clear()
            self._rows_per_agent_key.clear()
            self._repeated_keys_by_agent.clear()
            self._keys_truncated = False
            self._recent.clear()
            self._max_in_flight = 0
            self._max_in_flight_by_agent.clear()
            self._busy_s_by_agent.clear()
            self._release_hangs()
        return _json(start_response, 200, {"reset": True})

    def _release_hangs(self) -> None:
        # Swap first so requests arriving after this call hang on the new event.
        released, self._release = self._release, self._event_factory()
        released.set()



class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    length_header = environ.get("CONTENT_LENGTH") or ""
    if length_header:
        try:
            length = int(length_header)
        except ValueError:
            raise _BadRequest(400, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
        return bytes(stream.read(length))
    body = bytes(stream.read(MAX_BODY_BYTES + 1))
    if len(body) > MAX_BODY_BYTES:
        raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
    return body


def _read_rows(environ: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        document = json.loads(_read_body(environ))
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise _BadRequest(400, "the body must be an object with a 'rows' list")
    rows: list[dict[str, Any]] = document["rows"]
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _BadRequest(400, f"rows[{index}] must be an object")
    return rows


def _bearer_matches(header: str, token: str) -> bool:
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def _json(
    start_response: StartResponse,
    status: int,
    document: Any,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    body = json.dumps(document).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
              500: "Internal Server Error", 504: "Gateway Timeout"}.get(status, "Unknown")
    start_response(
        f"{status} {reason}",
        [*_JSON_HEADERS, ("Content-Length", str(len(body))), *extra_headers],
    )
    return [body]


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"

