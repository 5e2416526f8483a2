"""A fake Scope3 ``/v2/measure`` API for demos, load tests, benchmarks and integration tests.

Run it with ``python -m devtools.simulator --port 8081``. It answers in Scope3's shape with
deterministic values that scale with impressions (nytimes.com at 1000 impressions is about 66 g),
and can inject faults, switchable at runtime with ``POST /_control``:

=================  ===================================================================
mode               what every ``/v2/measure`` request gets
=================  ===================================================================
``ok``             a normal answer after the latency (subject to the fault *rates*)
``hang``           no answer until the next ``/_control`` or ``/_reset`` (or 10 min)
``500``            HTTP 500
``429``            HTTP 429 with ``Retry-After: <retry_after>``
``malformed``      HTTP 200 with a body that is not JSON
``reset``          the TCP connection is reset, no answer (needs the gevent server)
``slow_body``      headers at once, then the body trickling in over about 5 s
=================  ===================================================================

In mode ``ok``, each request independently hangs, gets 500 or gets 429 with probabilities
``hang_rate``, ``error_rate`` and ``status_429_rate``, drawn from a random source seeded with
``--seed``.

Poisoned rows spoil the whole request they are in, in any mode that answers, as upstreams do
when one row's input breaks them. Each ``poison_<kind>`` field, when set, is a text: a row whose
inventoryId contains it poisons its request with that kind (the first poisoned row decides):

======================  ====================================================================
``poison_5xx``          HTTP 500
``poison_400``          HTTP 400 refusing the whole request
``poison_hang``         no answer until the next ``/_control`` or ``/_reset`` (or 10 min)
``poison_slow``         a right answer, ``poison_slow_ms`` (2500) late
``poison_reset``        the TCP connection is reset, no answer
``poison_malformed``    HTTP 200 with a body that is not JSON
``poison_short``        HTTP 200 whose rows stop before the poisoned row
``poison_identity``     HTTP 200, rows in reverse order, the poisoned row's answer carrying
                        another row's ``rowIdentifier`` (alone: a made-up one)
``poison_row_error``    HTTP 200 in which every row carries an error
======================  ====================================================================

``GET /_stats`` reports what arrived; ``POST /_reset`` clears it and restores the settings
given on the command line.

``GET /_stats`` answers::

    {"requests": 12, "rows": 340, "rows_answered": 300,
     "by_status": {"200": 10, "429": 2},      # HTTP status, or "hang"/"reset" (no answer)
     "keys_truncated": false,                 # true once MAX_TRACKED_KEYS distinct keys are seen
     "max_in_flight": 4,                      # most /v2/measure requests being answered at once
     "repeated_keys_by_agent": {"measure-cache/0.1.0 (pid 7)": 0},  # keys one agent sent twice+
     "control": {"latency_ms": 100.0, ..., "mode": "ok"},
     "rows_per_key": {"nytimes.com|2024-10-30|1000|US||web|pc||gmsf|": 2},   # omit: ?keys=0
     "recent": [{"time": 1732780000.1, "user_agent": "...", "rows": 5, "status": "200"}],
                                              # last RECENT_LOG_SIZE requests; omit: ?recent=0
     "rows_per_key_by_agent": {"<agent>": {"<key>": 1}},                    # only ?by_agent=1
     "max_in_flight_by_agent": {"measure-cache/0.1.0 (pid 7)": 4},          # only ?by_agent=1
     "busy_s_by_agent": {"measure-cache/0.1.0 (pid 7)": 1.5}}               # only ?by_agent=1:
                                              # summed request durations; over a span of
                                              # time, the mean in flight

A key is :func:`row_key`: the fields that change the answer, joined with ``|``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
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

MODES = ("ok", "hang", "500", "429", "malformed", "reset", "slow_body")
# What a poisoned row does to its request (the ``poison_<kind>`` fields).
POISON_KINDS = (
    "5xx", "400", "hang", "slow", "reset", "malformed", "short", "identity", "row_error"
)
# The kinds that replace the request's outcome; the others change the answer's rows.
_POISON_OUTCOMES = {"5xx": "500", "400": "400", "hang": "hang", "reset": "reset",
                    "malformed": "malformed"}
# The WSGI environ key under which the gevent handler offers to reset the connection.
RESET_HOOK = "measure_simulator.reset_connection"
# Bounds so that a long load test cannot grow the simulator without limit.
RECENT_LOG_SIZE = 10_000
MAX_TRACKED_KEYS = 200_000
MAX_BODY_BYTES = 32 * 1024 * 1024
HANG_LIMIT_S = 600.0
SLOW_BODY_PIECES = 20
SLOW_BODY_GAP_S = 0.25

# Anchors so demos show familiar numbers; other domains get a stable pseudo-random rate.
_KNOWN_GRAMS_PER_1000: dict[str, float] = {"nytimes.com": 66.0}
_JSON_HEADERS = [("Content-Type", "application/json")]


class _Event(Protocol):
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


StartResponse = Callable[..., Any]
_Handler = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclasses.dataclass(frozen=True)
class Faults:
    """Latency and fault settings; every field can be changed at runtime via ``/_control``."""

    latency_ms: float = 100.0
    jitter_ms: float = 30.0
    error_rate: float = 0.0
    status_429_rate: float = 0.0
    retry_after: float = 2.0
    hang_rate: float = 0.0
    mode: str = "ok"
    poison_5xx: str = ""
    poison_400: str = ""
    poison_hang: str = ""
    poison_slow: str = ""
    poison_reset: str = ""
    poison_malformed: str = ""
    poison_short: str = ""
    poison_identity: str = ""
    poison_row_error: str = ""
    poison_slow_ms: float = 2500.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "retry_after", "poison_slow_ms"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("error_rate", "status_429_rate", "hang_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for kind in POISON_KINDS:
            if not isinstance(getattr(self, f"poison_{kind}"), str):
                raise ValueError(f"poison_{kind} must be a string (empty: off)")

    def poison(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, int] | None:
        """The kind of the first poisoned row among ``rows`` and its index, else None."""
        markers = [(kind, marker) for kind in POISON_KINDS
                   if (marker := getattr(self, f"poison_{kind}"))]
        if not markers:
            return None
        for index, row in enumerate(rows):
            inventory = row.get("inventoryId")
            if not isinstance(inventory, str):
                continue
            for kind, marker in markers:
                if marker in inventory:
                    return kind, index
        return None

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """Return a copy with ``changes`` applied; ValueError names an unknown or bad field."""
        known = {field.name for field in dataclasses.fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


def row_key(row: Mapping[str, Any], params: Mapping[str, str]) -> str:
    """The fields that change Scope3's answer for a row, joined: the unit of ``rows_per_key``."""
    fields = (
        row.get("inventoryId"), row.get("utcDatetime"), row.get("impressions"),
        row.get("country"), row.get("region"), row.get("channel"), row.get("deviceType"),
        row.get("network"), params.get("framework"), params.get("latest"),
    )
    return "|".join("" if value is None else str(value) for value in fields)


def measure_row(row: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    """Scope3's answer for one row: deterministic, linear in impressions, or a row error."""
    answer: dict[str, Any] = {"rowIdentifier": row.get("rowIdentifier")}
    inventory = row.get("inventoryId")
    impressions = row.get("impressions", 1000)
    problem = None
    if not isinstance(inventory, str) or not inventory.strip():
        problem = "inventoryId is required"
    elif "." not in inventory:
        problem = f"unknown inventoryId {inventory!r}: expected a domain such as nytimes.com"
    elif not isinstance(row.get("utcDatetime"), str) or not row["utcDatetime"]:
        problem = "utcDatetime is required"
    elif not _is_number(impressions) or impressions < 0:
        problem = "impressions must be a number >= 0"
    if problem is not None:
        answer.update(totalEmissions=None, inventoryCoverage=None, error={"message": problem})
        return answer

    assert isinstance(inventory, str)
    domain = inventory.strip().lower()
    per_1000 = _KNOWN_GRAMS_PER_1000.get(domain, 20.0 + 100.0 * _unit(domain))
    # The other fields nudge the rate by up to 5% either way, so distinct keys get distinct values.
    context = "|".join(
        str(row.get(name) or "")
        for name in ("utcDatetime", "country", "region", "channel", "deviceType", "network")
    ) + "|" + (params.get("framework") or "")
    factor = 0.95 + 0.10 * _unit(domain + "|" + context)
    modeled = domain in _KNOWN_GRAMS_PER_1000 or _unit(domain + "|coverage") < 0.8
    answer.update(
        totalEmissions=round(per_1000 * factor * float(impressions) / 1000.0, 6),
        inventoryCoverage="modeled" if modeled else "default",
    )
    return answer


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
            outcome = _POISON_OUTCOMES.get(kind, outcome)
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

        answered = _spoil([measure_row(row, params) for row in rows], poison)
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


def _spoil(answered: list[dict[str, Any]], poison: tuple[str, int] | None) -> list[dict[str, Any]]:
    """The answer's rows as a poisoned row of the kinds that answer 200 leaves them."""
    if poison is None:
        return answered
    kind, index = poison
    if kind == "short":
        return answered[:index]
    if kind == "row_error":
        return [{"rowIdentifier": row["rowIdentifier"], "totalEmissions": None,
                 "inventoryCoverage": None, "error": {"message": "the batch failed"}}
                for row in answered]
    if kind == "identity":
        others = [row["rowIdentifier"] for i, row in enumerate(answered) if i != index]
        spoiled = dict(answered[index])
        spoiled["rowIdentifier"] = others[0] if others else f"{spoiled['rowIdentifier']}-x"
        return [spoiled if i == index else row for i, row in enumerate(answered)][::-1]
    return answered


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


def _unit(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (Python's own hash() is salted per process)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


# --- command line ------------------------------------------------------------------------------

def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Faults]:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator", description="Serve a fake Scope3 API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--jitter-ms", type=float, default=30.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests -> 500")
    parser.add_argument("--status-429-rate", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=2.0, help="seconds, sent with 429")
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--poison-5xx", default="", metavar="TEXT",
                        help="a request with a row whose inventoryId contains TEXT gets 500")
    parser.add_argument("--poison-400", default="", metavar="TEXT",
                        help="a request with a row whose inventoryId contains TEXT gets 400")
    for kind in POISON_KINDS[2:]:
        parser.add_argument(f"--poison-{kind.replace('_', '-')}", default="", metavar="TEXT",
                            help=f"a row whose inventoryId contains TEXT: poison_{kind}")
    parser.add_argument("--poison-slow-ms", type=float, default=2500.0,
                        help="how late poison_slow answers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, error_rate=args.error_rate,
            status_429_rate=args.status_429_rate, retry_after=args.retry_after,
            hang_rate=args.hang_rate, mode=args.mode, poison_slow_ms=args.poison_slow_ms,
            **{f"poison_{kind}": getattr(args, f"poison_{kind}") for kind in POISON_KINDS},
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    return args, faults


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulator with gevent until SIGINT or SIGTERM."""
    args, faults = _parse_args(argv)
    import signal
    import socket
    import struct

    import gevent
    import gevent.event
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class ResettableHandler(WSGIHandler):  # type: ignore[misc]
        """Offers the app a way to abort the connection with a TCP reset."""

        def handle(self) -> None:
            # pywsgi writes headers and body in separate sends; with Nagle on, the second waits
            # for the client's delayed ACK (~40 ms) on every reused connection.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()

        def get_environ(self) -> dict[str, Any]:
            environ: dict[str, Any] = super().get_environ()
            connection = self.socket

            def reset() -> None:
                # Linger 0 makes close() send RST instead of FIN.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

            environ[RESET_HOOK] = reset
            return environ

    app = Scope3Simulator(
        faults, token=args.token, seed=args.seed, sleep=gevent.sleep,
        event_factory=gevent.event.Event,
    )
    server = WSGIServer(
        (args.host, args.port), app, handler_class=ResettableHandler, backlog=2048,
        log="default" if args.access_log else None,
    )
    server.start()
    print(f"Scope3 simulator listening on http://{args.host}:{server.server_port}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # stop() waits for open requests (up to 1 s), so it must not run in the signal callback.
        gevent.signal_handler(signum, lambda: gevent.spawn(server.stop, 1))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
