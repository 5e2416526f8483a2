"""The only code that speaks to Scope3: one HTTP client per worker for ``POST /v2/measure``.

Retry policy, per call to :meth:`UpstreamClient.measure`:

- connection errors, timeouts, 429 and 5xx are retried, at most ``retries`` times, with
  exponential backoff and full jitter;
- other 4xx are never retried (the same request would fail the same way); 401 and 403 also set
  :attr:`UpstreamClient.auth_failure` for readiness;
- a 2xx whose body is not JSON, or not Scope3's shape, is ``malformed`` and not retried: such an
  answer comes from a proxy error page or an API change, and asking again doubles the load for
  the same answer. It counts as a failure for the circuit breaker.

The circuit breaker hears of every attempt, but an answer refusing a call (5xx, 429, malformed)
counts once per call however often it is retried; no answer at all (timeout, connection error)
counts at each attempt, since each is a fresh sign that upstream is unreachable. A caller that
isolates failures (see ``row_isolation``) asks with ``judge=True``: every failure one row's input
may cause (5xx, timeout, dropped connection, malformed answer) is then left for it to judge
with :meth:`settle`, since a batch may fail because of one row, which says nothing about
upstream's health.

``Retry-After`` (on 429 or 5xx) closes a per-client gate: no request leaves this client until it
passes, whichever caller sends it. The token is kept in the session headers only, and is
scrubbed from the upstream text that reaches a log line.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone
from importlib import metadata
from typing import Any, Literal

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError

from measure_service import prometheus_metrics
from measure_service.backoff import Backoff
from measure_service.breaker import CircuitBreaker
from measure_service.concurrency_limiter import OK, OVERLOAD, AdaptiveLimiter
from measure_service.logs import REDACTED

_LOG = logging.getLogger(__name__)

Outcome = Literal[
    "http_4xx", "http_429", "http_5xx", "timeout", "connection_error", "malformed", "breaker_open"
]
_RETRYABLE: frozenset[str] = frozenset({"http_429", "http_5xx", "timeout", "connection_error"})
_NO_ANSWER: frozenset[str] = frozenset({"timeout", "connection_error"})
# Failures that one row's input may cause: with ``judge``, left to the caller to judge.
JUDGEABLE: frozenset[str] = frozenset({"http_5xx", "timeout", "connection_error", "malformed"})

# A refused token fails every request; one ERROR line a minute says so without flooding.
AUTH_LOG_INTERVAL_S = 60.0
# A Retry-After beyond this is clamped: a hostile or buggy header must not park a worker for days.
MAX_RETRY_AFTER_S = 300.0
_GENERIC_ROW_ERROR = "upstream reported an error for this row"
_BODY_SNIPPET_CHARS = 200
# Upstream's row error and coverage texts are cached and returned: a hostile answer must not
# make them large.
MAX_UPSTREAM_TEXT = 256
_CHUNK_BYTES = 64 * 1024
# An answer row with every breakdown is a few hundred bytes; error bodies are small.
ANSWER_BASE_BYTES = 256 * 1024
ANSWER_BYTES_PER_ROW = 16 * 1024


@dataclass(frozen=True, slots=True)
class RowResult:
    """Upstream's answer for one row; ``error`` is set (and emissions are None) when it failed."""

    total_emissions: float | None
    inventory_coverage: str | None
    error: str | None


class UpstreamError(Exception):
    """A call that produced no usable answer: retries exhausted, not retryable, or breaker open."""

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Carry the outcome label, the HTTP status if any, and upstream's Retry-After if any."""
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.status = status
        self.retry_after = retry_after
        # False while a caller still has to report this failure to the breaker (see settle).
        self.judged = True
        # The request never reached upstream (no connection): no row's input can explain it.
        self.unsent = False
        # How long the attempt took (0 when it never left).
        self.elapsed_s = 0.0

    def __repr__(self) -> str:
        return (
            f"UpstreamError(outcome={self.outcome!r}, status={self.status!r}, "
            f"retry_after={self.retry_after!r}, message={str(self)!r})"
        )


class _Malformed(Exception):
    """The answer's body is not Scope3's shape."""


class _DeadlineExceeded(Exception):
    """The body trickled in for longer than an honest answer takes."""


class _TooLarge(Exception):
    """The body is larger than an honest answer for the rows sent."""


def answer_limit(rows: int) -> int:
    """The most bytes read of an answer to ``rows`` rows: far above an honest answer."""
    return ANSWER_BASE_BYTES + ANSWER_BYTES_PER_ROW * rows


def user_agent() -> str:
    """The User-Agent sent upstream; the pid lets the simulator tell workers apart."""
    try:
        version = metadata.version("measure-cache")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return f"measure-cache/{version} (pid {os.getpid()})"


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(seconds, MAX_RETRY_AFTER_S) if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, when.timestamp() - now_epoch), MAX_RETRY_AFTER_S)


class UpstreamClient:
    """A Scope3 ``/v2/measure`` client with one pooled session, retries, a gate and a breaker."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        pool_size: int,
        retries: int = 2,
        breaker: CircuitBreaker | None = None,
        limiter: AdaptiveLimiter | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Build the client; ``wall_clock`` only turns an HTTP-date Retry-After into seconds.

        ``limiter`` hears every attempt's latency, and each 429 or timeout as overload.
        """
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(token, str):
            raise TypeError("token must be a str")
        if "\r" in token or "\n" in token:
            raise ValueError("token must not contain line breaks")
        for name, value in (("connect_timeout_s", connect_timeout_s),
                            ("read_timeout_s", read_timeout_s)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")

        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + "/v2/measure"
        self._token = token
        self._timeout = (float(connect_timeout_s), float(read_timeout_s))
        self._pool_size = pool_size
        self._retries = retries
        self._breaker = breaker
        self._limiter = limiter
        self._backoff = backoff if backoff is not None else Backoff(0.1, 2.0)
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock

        self._lock = threading.Lock()
        self._not_before = -math.inf
        self._auth_failure: str | None = None
        self._auth_logged_at = -math.inf

        self._session = requests.Session()
        # urllib3 retries are off: this class decides what to retry, and counts each attempt.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"User-Agent": user_agent(), "Accept": "application/json"})
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    @property
    def auth_failure(self) -> str | None:
        """Why upstream refused our token (after a 401/403), or None; cleared by any 2xx."""
        with self._lock:
            return self._auth_failure

    def measure(
        self,
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, str],
        *,
        judge: bool = False,
        read_timeout_s: float | None = None,
        observe_latency: bool = True,
    ) -> dict[str, RowResult]:
        """Send ``rows`` upstream and return their results keyed by ``rowIdentifier``.

        Rows are matched by ``rowIdentifier``, never by position. A requested row absent from
        the answer is absent from the result (the caller treats it as a failed fetch), and so
        is one whose identifier the answer holds twice (which of them is its answer cannot be
        told); rows upstream added are ignored. ``params`` (latest, framework) are forwarded;
        ``includeRows=true`` is always added. Raises UpstreamError when retries are exhausted,
        the failure is not retryable, or the breaker refuses the first attempt
        (``breaker_open``; a breaker that opens between retries ends the call with the last
        real failure instead).

        With ``judge``, a failure in :data:`JUDGEABLE` of a request that reached upstream (a
        connection refused or never made is upstream's own) is neither retried (the caller's
        splitting and re-sending is the retry) nor reported to the breaker or the limiter: the
        error comes back with ``judged=False`` and the caller must pass it to :meth:`settle`.
        ``read_timeout_s`` shortens the read timeout of this call. ``observe_latency=False``
        keeps this call's latency from the limiter (rows whose slowness is their own).
        """
        wanted = _row_identifiers(rows)
        if not wanted:
            return {}
        body = {"rows": [dict(row) for row in rows]}
        query = {**params, "includeRows": "true"}
        last_error: UpstreamError | None = None
        timeout = self._timeout
        if read_timeout_s is not None:
            timeout = (timeout[0], min(timeout[1], read_timeout_s))
        for attempt in range(self._retries + 1):
            if last_error is not None:
                self._sleep(self._backoff.delay(attempt - 1))
            self._wait_for_gate()
            if self._breaker is not None and not self._breaker.allow():
                if last_error is not None:
                    break
                raise UpstreamError("breaker_open", "circuit breaker is open; upstream not called")
            if last_error is not None:
                prometheus_metrics.UPSTREAM_RETRIES.inc()
            try:
                results = self._attempt(
                    body, query, wanted, attempt, judge=judge, timeout=timeout,
                    observe_latency=observe_latency,
                )
            except UpstreamError as exc:
                if judge and exc.outcome in JUDGEABLE and not exc.unsent:
                    exc.judged = False  # the caller reports this attempt (settle)
                    raise
                self._report_failure(exc, retried=last_error is not None)
                last_error = exc
                if exc.outcome not in _RETRYABLE:
                    break
            except BaseException:
                # Stopped on our side (a call cut short): nothing was learnt of upstream.
                if self._breaker is not None:
                    self._breaker.record_excused()
                raise
            else:
                if self._breaker is not None:
                    self._breaker.record_success()
                return results
        assert last_error is not None
        raise last_error

    def _report_failure(self, error: UpstreamError, *, retried: bool) -> None:
        """Tell the breaker about one failed attempt.

        An answer that refuses the call (5xx, 429, malformed) counts once per call, however
        often it is retried: it may be this request's own doing. No answer at all (timeout,
        connection error) counts at every attempt, each being a fresh sign that upstream is
        unreachable. A plain 4xx means upstream is up and answering.
        """
        if self._breaker is None:
            return
        if error.outcome == "http_4xx":
            self._breaker.record_success()
        elif retried and error.outcome not in _NO_ANSWER:
            self._breaker.record_excused()
        else:
            self._breaker.record_failure(answered=error.outcome not in _NO_ANSWER)

    def settle(self, error: UpstreamError, *, explained: bool) -> None:
        """Report the verdict on a call that failed with ``judged=False``, once.

        ``explained``: the failure is put down to one row's input (that row failed alone while
        upstream answered other requests), so it does not count towards opening the breaker,
        nor, for a timeout, as a sign of overload to the limiter.
        """
        if error.judged:
            return
        error.judged = True
        if not explained and error.outcome == "timeout" and self._limiter is not None:
            self._limiter.observe(error.elapsed_s, OVERLOAD)
        if self._breaker is None:
            return
        if explained:
            self._breaker.record_excused()
        else:
            self._breaker.record_failure(answered=error.outcome not in _NO_ANSWER)

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def __repr__(self) -> str:
        return f"UpstreamClient(base_url={self._base_url!r}, pool_size={self._pool_size})"

    # --- one HTTP attempt ----------------------------------------------------------------------

    def _attempt(
        self,
        body: dict[str, Any],
        query: dict[str, str],
        wanted: frozenset[str],
        attempt: int,
        *,
        judge: bool,
        timeout: tuple[float, float],
        observe_latency: bool,
    ) -> dict[str, RowResult]:
        prometheus_metrics.UPSTREAM_ROWS.inc(len(wanted))
        prometheus_metrics.UPSTREAM_BATCH_ROWS.observe(len(wanted))
        started = self._clock()
        log_fields: dict[str, Any] = {"attempt": attempt, "rows": len(wanted)}
        if judge:
            log_fields["judged_by_caller"] = True
        if timeout != self._timeout:
            log_fields["read_timeout_s"] = timeout[1]
        prometheus_metrics.UPSTREAM_IN_FLIGHT.inc()
        try:
            status, headers, content = self._post(body, query, started, timeout)
        except (requests.Timeout, _DeadlineExceeded) as exc:
            raise self._failure(
                "timeout", "upstream timed out", log_fields, started,
                unsent=isinstance(exc, requests.ConnectTimeout),
            ) from exc
        except _TooLarge as exc:
            raise self._failure(
                "malformed", f"upstream answer is over {exc.args[0]} bytes", log_fields, started
            ) from None
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise self._failure("timeout", "upstream timed out", log_fields, started) from exc
            raise self._failure(
                "connection_error", "could not reach upstream", log_fields, started,
                unsent=_never_connected(exc),
            ) from exc
        except requests.RequestException as exc:
            raise self._failure(
                "connection_error", f"upstream request failed ({type(exc).__name__})",
                log_fields, started,
            ) from exc
        finally:
            prometheus_metrics.UPSTREAM_IN_FLIGHT.dec()
            prometheus_metrics.UPSTREAM_LATENCY.observe(max(0.0, self._clock() - started))

        log_fields["upstream_status"] = status
        if 200 <= status < 300:
            try:
                results = _parse_answer(content, wanted, self._redact)
            except _Malformed as exc:
                log_fields["upstream_body"] = self._snippet(content)
                raise self._failure(
                    "malformed", f"upstream answered {status} with {exc}", log_fields, started,
                    status=status,
                ) from None
            return self._success(results, log_fields, started, observe_latency)

        retry_after = parse_retry_after(headers.get("Retry-After"), self._wall_clock())
        if retry_after is not None and (status == 429 or status >= 500):
            self._close_gate(retry_after)
            log_fields["retry_after_s"] = retry_after
        log_fields["upstream_body"] = self._snippet(content)
        if status == 429:
            raise self._failure(
                "http_429", "upstream answered 429 (rate limited)", log_fields, started,
                status=status, retry_after=retry_after,
            )
        if status >= 500:
            raise self._failure(
                "http_5xx", f"upstream answered {status}", log_fields, started,
                status=status, retry_after=retry_after,
            )
        if status in (401, 403):
            # Its own rate-limited ERROR line replaces the per-attempt warning.
            self._note_auth_failure(status, log_fields)
        if 400 <= status < 500:
            raise self._failure(
                "http_4xx", f"upstream answered {status}", log_fields, started, status=status,
                log=status not in (401, 403),
            )
        # 1xx/3xx: redirects are not followed (a POST must not turn into a GET).
        raise self._failure(
            "malformed", f"upstream answered unexpected status {status}", log_fields, started,
            status=status,
        )

    def _post(
        self,
        body: dict[str, Any],
        query: dict[str, str],
        started: float,
        timeout: tuple[float, float],
    ) -> tuple[int, Mapping[str, str], bytes]:
        # The read timeout bounds each recv, not the whole body: a server trickling bytes could
        # hold us forever, so the body also has an overall deadline.
        deadline = started + timeout[0] + timeout[1]
        limit = answer_limit(len(body["rows"]))
        with self._session.post(
            self._url, params=query, json=body, timeout=timeout, stream=True,
            allow_redirects=False,
        ) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(_CHUNK_BYTES):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise _TooLarge(limit)
                if self._clock() > deadline:
                    raise _DeadlineExceeded
            return response.status_code, response.headers, b"".join(chunks)

    # --- outcomes ------------------------------------------------------------------------------

    def _success(
        self,
        results: dict[str, RowResult],
        log_fields: dict[str, Any],
        started: float,
        observe_latency: bool,
    ) -> dict[str, RowResult]:
        row_errors = sum(1 for result in results.values() if result.error is not None)
        outcome = "row_error" if row_errors else "ok"
        prometheus_metrics.UPSTREAM_REQUESTS.labels(outcome=outcome).inc()
        if self._limiter is not None and observe_latency:
            self._limiter.observe(self._clock() - started, OK)
        with self._lock:
            self._auth_failure = None
        _LOG.debug(
            "upstream answered",
            extra={**log_fields, "upstream_outcome": outcome, "row_errors": row_errors,
                   "elapsed_ms": self._elapsed_ms(started)},
        )
        return results

    def _failure(
        self,
        outcome: Outcome,
        message: str,
        log_fields: dict[str, Any],
        started: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        log: bool = True,
        unsent: bool = False,
    ) -> UpstreamError:
        prometheus_metrics.UPSTREAM_REQUESTS.labels(outcome=outcome).inc()
        elapsed = max(0.0, self._clock() - started)
        judged_later = (outcome in JUDGEABLE and bool(log_fields.get("judged_by_caller"))
                        and not unsent)
        if self._limiter is not None and outcome in ("http_429", "timeout") and not judged_later:
            self._limiter.observe(elapsed, OVERLOAD)
        error = UpstreamError(outcome, message, status=status, retry_after=retry_after)
        error.elapsed_s = elapsed
        error.unsent = unsent
        if not log:
            return error
        _LOG.warning(
            "upstream request failed: %s",
            message,
            extra={**log_fields, "upstream_outcome": outcome,
                   "will_retry": outcome in _RETRYABLE
                   and log_fields["attempt"] < self._retries and not judged_later,
                   "elapsed_ms": self._elapsed_ms(started)},
        )
        return error

    def _note_auth_failure(self, status: int, log_fields: dict[str, Any]) -> None:
        now = self._clock()
        with self._lock:
            self._auth_failure = f"upstream refused the API token (HTTP {status})"
            should_log = now - self._auth_logged_at >= AUTH_LOG_INTERVAL_S
            if should_log:
                self._auth_logged_at = now
        if should_log:
            _LOG.error(
                "upstream refused the API token; check SCOPE3_API_TOKEN",
                extra={**log_fields, "upstream_outcome": "http_4xx"},
            )

    # --- Retry-After gate ----------------------------------------------------------------------

    def _close_gate(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)

    def _wait_for_gate(self) -> None:
        # Loop: another caller may push the gate further while we sleep.
        while True:
            with self._lock:
                remaining = self._not_before - self._clock()
            if remaining <= 0:
                return
            self._sleep(remaining)

    # --- helpers -------------------------------------------------------------------------------

    def _snippet(self, content: bytes) -> str:
        return redact_and_cut(content, self._token, _BODY_SNIPPET_CHARS)

    def _redact(self, text: str) -> str:
        """``text`` without our token (upstream may echo it back), cut to a bounded length."""
        return redact_and_cut(text, self._token, MAX_UPSTREAM_TEXT)

    def _elapsed_ms(self, started: float) -> float:
        return round((self._clock() - started) * 1000.0, 3)


# The shortest piece of a secret worth dropping from the end of a whole text: fewer characters
# tell an attacker little, and are too often the end of an ordinary word.
_PARTIAL_SECRET = 4


def redact_and_cut(content: bytes | str, secret: str, limit: int) -> str:
    """At most ``limit`` characters of ``content`` with no part of ``secret`` left in them.

    Redacts before cutting, so a secret across the cut is removed whole; then a trailing prefix
    of the secret is dropped: any length when something was cut off (a secret began at the
    cut), at least :data:`_PARTIAL_SECRET` characters when the text is whole (upstream cut our
    token short). A whole text's last few characters are ordinary text ("modeled" keeps its "d"
    whatever the secret starts with).
    """
    cut = False
    if isinstance(content, bytes):
        # A character takes at most 4 bytes: this decodes every character the cut can keep.
        kept = (limit + len(secret)) * 4
        cut = len(content) > kept
        content = content[:kept].decode("utf-8", errors="replace")
    if not secret or secret[0] not in content:
        return content[:limit]
    window = limit + len(secret)
    redacted = content[:window].replace(secret, REDACTED)
    text = redacted[:limit]
    whole = not (cut or len(content) > window or len(redacted) > limit)
    shortest = _PARTIAL_SECRET if whole else 1
    for size in range(min(len(secret) - 1, len(text)), shortest - 1, -1):
        if text.endswith(secret[:size]):
            return text[:-size]
    return text


def _never_connected(error: requests.ConnectionError) -> bool:
    """Whether ``error`` came before a connection was made (refused, unreachable).

    urllib3 reports a refused or unreachable address as ``NewConnectionError``, a subclass of
    ``ConnectTimeoutError``: the one check covers all three.
    """
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, ConnectTimeoutError)


def _row_identifiers(rows: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    seen: set[str] = set()
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{index}] must be a mapping")
        identifier = row.get("rowIdentifier")
        if not isinstance(identifier, str) or not identifier:
            raise ValueError(f"rows[{index}].rowIdentifier must be a non-empty str")
        if identifier in seen:
            raise ValueError(f"rows[{index}].rowIdentifier {identifier!r} is not unique")
        seen.add(identifier)
    return frozenset(seen)


def _parse_answer(
    content: bytes, wanted: frozenset[str], redact: Callable[[str], str]
) -> dict[str, RowResult]:
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise _Malformed("a body that is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise _Malformed("no 'rows' list")
    results: dict[str, RowResult] = {}
    ambiguous: set[str] = set()
    for item in document["rows"]:
        if not isinstance(item, dict) or not isinstance(item.get("rowIdentifier"), str):
            raise _Malformed("a row without a string 'rowIdentifier'")
        identifier = item["rowIdentifier"]
        if identifier not in wanted:
            continue
        if identifier in results:
            ambiguous.add(identifier)
        results[identifier] = _parse_row(item, redact)
    for identifier in ambiguous:
        del results[identifier]
    return results


def _parse_row(item: Mapping[str, Any], redact: Callable[[str], str]) -> RowResult:
    """One answer row; upstream's own text passes through ``redact`` (it may echo our token)."""
    emissions = item.get("totalEmissions")
    if emissions is not None and (
        isinstance(emissions, bool)
        or not isinstance(emissions, (int, float))
        or not math.isfinite(emissions)
    ):
        raise _Malformed("a row whose 'totalEmissions' is not a finite number")
    coverage = item.get("inventoryCoverage")
    if coverage is not None:
        if not isinstance(coverage, str):
            raise _Malformed("a row whose 'inventoryCoverage' is not a string")
        coverage = redact(coverage)
    error = item.get("error")
    if error is None:
        return RowResult(None if emissions is None else float(emissions), coverage, None)
    if isinstance(error, dict):
        message = error.get("message")
        text = message if isinstance(message, str) and message else _GENERIC_ROW_ERROR
    elif isinstance(error, str):
        text = error or _GENERIC_ROW_ERROR
    else:
        raise _Malformed("a row whose 'error' is neither an object nor a string")
    return RowResult(None, coverage, redact(text))
