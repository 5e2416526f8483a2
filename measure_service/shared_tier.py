"""The shared tier: rows kept in Redis behind every worker's in-process cache.

What it stores, per row key: a compact JSON envelope ``[1, fetched_ms, expires_ms, emissions,
coverage, error]`` (schema 1; times are wall-clock milliseconds, so ``stale`` means the same on
every instance). Anything else found at a key (garbage, another schema, another type) reads as
a miss and is overwritten by the next fetch. Never pickle: a shared store must not run code.

Keys are ``<prefix>{<digest>}`` with a 128-bit digest of the row key, and the row's fetch lease
is ``<prefix>{<digest>}:lease``: the hash tag puts both in one Redis Cluster slot, so the Lua
scripts below (which touch both) run there too.

Single flight across workers and instances (the fetcher calls :meth:`claim` before it sends a
batch upstream):

- a row with a fresh value in Redis is answered from it;
- else the first asker takes the lease (``SET NX PX`` with a random token) and fetches;
- the others :meth:`watch` it: a watcher greenlet polls (pipelined, with backoff) until the
  value appears, or until the lease vanishes without a value (the holder died or failed) and
  the watcher takes the lease itself. Each poll reads the lease's time left (PTTL), and the
  next poll is due no later than the moment the lease lapses: a dead holder is replaced then,
  not a poll interval later;
- the holder writes with a compare-and-set script: a holder whose lease has lapsed may not
  overwrite a newer value, nor release somebody else's lease. A row is dated by when its lease
  was taken (before it was sent upstream), so a holder that stalled past its lease and writes
  after the worker that took over has the older row, and is refused.

Failure is not an outage: every call is bounded by short socket timeouts, and a circuit breaker
makes the tier cost nothing while Redis is down; then reads miss, claims say "fetch it
yourself", writes are skipped. One log line per degraded/recovered transition.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
import gevent.event
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from measure_service import prometheus_metrics
from measure_service.breaker import CircuitBreaker, State
from measure_service.config import Config, redact_url
from measure_service.greenlets import spawn
from measure_service.rows import RowKey
from measure_service.upstream import RowResult

_LOG = logging.getLogger(__name__)
SCHEMA = 1
# Keys per MGET: large enough to amortise the round trip, small enough that one command does
# not hold Redis (single-threaded) for long.
READ_CHUNK = 100
# Spread of the Redis expiry, so rows fetched together do not all expire in the same second.
TTL_JITTER = 0.05
# Watchers poll a held lease at first soon (a fast upstream answers in tens of ms), then back
# off; the cap bounds how late a holder's value is noticed (a lapse is looked for at the
# lease's end, whatever the backoff).
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.1
# Readiness probes PING Redis at most this often per worker, however often they come.
STATUS_PING_INTERVAL_S = 1.0
# A watcher looks again this long after the lease it waits on should have expired: PTTL
# counts whole milliseconds, rounded down.
LEASE_END_MARGIN_S = 0.001
# Keys one watcher poll sends in one pipeline.
POLL_CHUNK = 200

# KEYS: value, lease. ARGV: token, lease ms, fresh-after ms. Returns {1, value} for a value
# fetched at or after fresh-after, {2} when this caller took the lease, {3, ms} while another
# holder's lease runs. A lease without expiry is not one of ours (garbage): it is replaced.
_CLAIM_TEXT = """
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if ok and value then
  local fetched = string.match(value, '^%[1,(%d+),')
  if fetched and tonumber(fetched) >= tonumber(ARGV[3]) then return {1, value} end
end
local held = redis.call('PTTL', KEYS[2])
if held > 0 then return {3, held} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {2}
"""

# KEYS: value, lease. ARGV: token ('' when none), envelope, ms to live, fetched ms.
# Returns 1 written by the lease holder, 2 written without a lease (none held, no newer value),
# 0 refused: another holder has the lease, or a value at least as new is there.
_WRITE_TEXT = """
local ok, lease = pcall(redis.call, 'GET', KEYS[2])
if not ok then redis.call('DEL', KEYS[2]); lease = false end
if lease and lease == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
if lease then return 0 end
local found, value = pcall(redis.call, 'GET', KEYS[1])
if found and value then
  local fetched = string.match(value, '^%[1,(%d+),')
  if fetched and tonumber(fetched) >= tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 2
"""

# KEYS: lease. ARGV: token. Deletes the lease only if this caller still holds it.
_RELEASE_TEXT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Script(NamedTuple):
    text: str
    sha: str


def _script(text: str) -> _Script:
    return _Script(text, hashlib.sha1(text.encode()).hexdigest())


# One script call: its keys, its arguments.
_Call = tuple[tuple[str, ...], tuple[Any, ...]]
_CLAIM = _script(_CLAIM_TEXT)
_WRITE = _script(_WRITE_TEXT)
_RELEASE = _script(_RELEASE_TEXT)


@dataclass(frozen=True, slots=True)
class SharedRow:
    """One row as Redis holds it; times are wall-clock seconds."""

    total_emissions: float | None
    inventory_coverage: str | None
    error: str | None
    fetched_at: float
    expires_at: float


class Verdict(enum.Enum):
    """What a claim tells the caller to do when Redis has no fresh value."""

    FETCH = "fetch"  # fetch it: this worker holds the lease, or Redis is out
    WAIT = "wait"  # another worker holds the lease: watch the row


FETCH = Verdict.FETCH
WAIT = Verdict.WAIT
Claim = SharedRow | Verdict


def encode(row: SharedRow) -> bytes:
    """The envelope stored for ``row``."""
    return orjson.dumps(
        [
            SCHEMA, round(row.fetched_at * 1000), round(row.expires_at * 1000),
            row.total_emissions, row.inventory_coverage, row.error,
        ]
    )


def decode(raw: bytes | None) -> SharedRow | None:
    """The row in an envelope, or None for anything that is not a schema-1 envelope."""
    if raw is None:
        return None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, list) or len(document) != 6 or document[0] != SCHEMA:
        return None
    _, fetched, expires, emissions, coverage, error = document
    if type(fetched) is not int or type(expires) is not int or expires < fetched:
        return None
    if emissions is not None and (
        type(emissions) not in (int, float) or not math.isfinite(emissions)
    ):
        return None
    if not (coverage is None or isinstance(coverage, str)):
        return None
    if not (error is None or isinstance(error, str)):
        return None
    return SharedRow(
        None if emissions is None else float(emissions), coverage, error,
        fetched / 1000, expires / 1000,
    )


def key_name(prefix: str, key: RowKey) -> str:
    """The Redis key of ``key``'s row: its digest inside a hash tag."""
    digest = hashlib.blake2b(orjson.dumps(tuple(key)), digest_size=16).digest()
    return f"{prefix}{{{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}}}"


def connect(config: Config) -> redis.Redis | redis.RedisCluster:
    """A client for ``REDIS_URL``: a blocking pool (gevent-friendly once patched), no retries.

    The tier decides what a failure means; redis-py's own retries would multiply each socket
    timeout by the retry count while Redis hangs.
    """
    timeout_s = config.redis_timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": config.redis_connect_timeout_ms / 1000,
        "retry": Retry(NoBackoff(), 0),
        "client_name": f"{config.service}-{os.getpid()}",
    }
    if config.redis_cluster:
        return redis.RedisCluster.from_url(
            config.redis_url, max_connections=config.redis_pool_size, **options
        )
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url, max_connections=config.redis_pool_size, timeout=timeout_s, **options
    )
    return redis.Redis(connection_pool=pool)


class SharedTier:
    """One worker's view of the shared Redis tier: read, claim, watch, write, release.

    ``ttl_s``, ``stale_s`` and ``error_ttl_s`` are the fetcher's lifetimes. A row fetched
    longer than ``ttl_s`` ago is stale: reads return it (it is served ``stale``), claims treat
    it as missing (a refresh takes the lease). ``clock`` is the caller's clock for timing;
    ``wall_clock`` dates rows across machines.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        lease_s: float,
        ttl_s: float,
        stale_s: float,
        error_ttl_s: float,
        breaker: CircuitBreaker,
        cluster: bool = False,
        description: str = "redis",
        wall_clock: Callable[[], float] = time.time,
        ping_interval_s: float = STATUS_PING_INTERVAL_S,
    ) -> None:
        """Use ``client`` (see :func:`connect`); ``description`` names Redis in log lines;
        :meth:`status` PINGs Redis at most once per ``ping_interval_s``."""
        self._client = client
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_s * 1000))
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._error_ttl_s = error_ttl_s
        self._breaker = breaker
        self._cluster = cluster
        self._description = description
        self._wall_clock = wall_clock
        # Leases this worker holds, by row key: the token proves it at write or release, and
        # the wall-clock time it was taken dates the row fetched under it.
        self._held: dict[RowKey, _Lease] = {}
        # Rows watched for another holder's value: key -> (callbacks, backoff).
        self._watched: dict[RowKey, _Watch] = {}
        # When another holder's lease ends (monotonic), as the last claim of a watched row saw
        # it: the time the claim was sent plus the PTTL it read, never later than the real end
        # however late the answer is handled.
        self._lease_ends: dict[RowKey, float] = {}
        self._schedule: list[tuple[float, int, RowKey]] = []
        self._sequence = 0
        self._wake = gevent.event.Event()
        self._watcher: gevent.Greenlet | None = None
        self._full_since: float | None = None
        self._last_ping = -math.inf
        self._ping_interval_s = ping_interval_s
        self._ping_failed = False
        self._closed = False

    # --- the interface the fetcher uses ------------------------------------------------------

    def read(self, keys: Sequence[RowKey]) -> dict[RowKey, SharedRow]:
        """The rows Redis holds for ``keys`` (fresh or stale); nothing when Redis is out."""
        if not keys or not self._breaker.allow():
            return {}
        names = [key_name(self._prefix, key) for key in keys]
        values = self._run("read", lambda: self._mget(names))
        if values is None:
            return {}
        found: dict[RowKey, SharedRow] = {}
        now = self._wall_clock()
        undecodable = 0
        for key, raw in zip(keys, values, strict=True):
            row = decode(raw)
            if row is None:
                undecodable += raw is not None
            elif self._lifetime_left(row, now) > 0:
                found[key] = row
        if undecodable:
            prometheus_metrics.SHARED_ERRORS.labels("undecodable").inc(undecodable)
        if found:
            prometheus_metrics.SHARED_HITS.inc(len(found))
        if len(found) < len(keys):
            prometheus_metrics.SHARED_MISSES.inc(len(keys) - len(found))
        return found

    def claim(self, keys: Sequence[RowKey]) -> list[Claim]:
        """For each key: its fresh value, FETCH (this worker fetches it) or WAIT (watch it)."""
        return self._claim_keys(keys, "won")

    def _claim_keys(self, keys: Sequence[RowKey], taken: str) -> list[Claim]:
        """:meth:`claim`, counting each lease taken as lease outcome ``taken``."""
        claims: list[Claim] = [FETCH] * len(keys)
        asked = [(index, key) for index, key in enumerate(keys) if key not in self._held]
        if not asked or not self._breaker.allow():
            return claims
        tokens = [os.urandom(8).hex() for _ in asked]
        sent = time.monotonic()
        now = self._wall_clock()
        fresh_after_ms = round((now - self._ttl_s) * 1000)
        answers = self._run(
            "claim", lambda: self._claim([key for _, key in asked], tokens, fresh_after_ms)
        )
        if answers is None:
            return claims
        won = 0  # FETCH with a lease taken now (FETCH without one is counted nowhere)
        for (index, key), token, answer in zip(asked, tokens, answers, strict=True):
            claims[index] = self._settle_claim(key, _Lease(token, now), answer, sent)
            won += claims[index] is FETCH
        if won:
            prometheus_metrics.SHARED_LEASES.labels(taken).inc(won)
        return claims

    def watch(
        self,
        key: RowKey,
        on_value: Callable[[RowKey, SharedRow], None],
        on_fetch: Callable[[RowKey], None],
    ) -> None:
        """Poll ``key`` until its holder's value arrives (``on_value``), or until this worker
        must fetch it (``on_fetch``: the lease lapsed and is now ours, or Redis failed)."""
        if self._closed:
            on_fetch(key)
            return
        self._watched[key] = _Watch(on_value, on_fetch, FIRST_POLL_S)
        self._schedule_poll(key, self._next_look(key, FIRST_POLL_S))
        if self._watcher is None:
            self._watcher = spawn(self._watch_loop)

    def write(self, results: Iterable[tuple[RowKey, RowResult]]) -> None:
        """Store rows just fetched; a lease this worker lost does not overwrite a newer value.

        A row fetched under a lease is dated by when the lease was taken, before the fetch was
        sent; one fetched without a lease (Redis was out at the claim), by now.
        """
        now = self._wall_clock()
        batch = []
        for key, result in results:
            lease = self._held.pop(key, None)
            if lease is None:
                batch.append((key, self._row(result, now), ""))
            else:
                batch.append((key, self._row(result, min(now, lease.taken_at)), lease.token))
        if not batch or not self._breaker.allow():
            return
        answers = self._run("write", lambda: self._write(batch))
        if answers is None:
            return
        lost = sum(1 for answer in answers if answer == 0)
        if lost:
            prometheus_metrics.SHARED_LEASES.labels("lost").inc(lost)

    def release(self, keys: Iterable[RowKey]) -> None:
        """Give up the leases of rows this worker failed to fetch, so a waiter takes over."""
        leases = [(key, lease.token) for key in keys if (lease := self._held.pop(key, None))]
        if not leases or not self._breaker.allow():
            return
        self._run("release", lambda: self._release(leases))

    def status(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded", why)`` while Redis is out or full.

        It PINGs Redis (at most once per ``ping_interval_s``, and while the breaker
        is open only as its probe): a worker that serves only hits from memory never talks to
        Redis otherwise, and would not notice that Redis went away, or came back.
        """
        now = time.monotonic()
        if now - self._last_ping >= self._ping_interval_s and self._breaker.allow():
            self._last_ping = now
            self._ping_failed = self._run("ping", self._client.ping) is None
        if self._ping_failed or self._breaker.state != "closed":
            return "degraded", f"{self._description} is unreachable; serving from memory"
        if self._full_since is not None:
            return "degraded", f"{self._description} is full; new rows are not shared"
        return "ok", None

    def close(self) -> None:
        """Stop watching (the caller fails what it was waiting for), give up the leases this
        worker holds (so other workers fetch those rows now, not when the leases expire), and
        close the connections."""
        self._closed = True
        self.release(list(self._held))
        if self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None
        self._watched.clear()
        try:
            self._client.close()
            pool = getattr(self._client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()  # a pool passed in is not closed with its client
        except Exception:  # a client that cannot close cleanly must not stop the worker's exit
            _LOG.debug("redis client close failed", exc_info=True)

    # --- helpers -------------------------------------------------------------------------------

    def _lifetime_left(self, row: SharedRow, now: float) -> float:
        """How long ``row`` may still be served: its Redis expiry, capped by our own limits."""
        age = now - row.fetched_at
        limit = self._error_ttl_s if row.error is not None else self._ttl_s + self._stale_s
        return min(row.expires_at - now, limit - age)

    def age(self, row: SharedRow) -> float:
        """Seconds since ``row`` was fetched, by this machine's wall clock."""
        return self._wall_clock() - row.fetched_at

    def _row(self, result: RowResult, fetched_at: float) -> SharedRow:
        """The row to store for an upstream ``result`` fetched at wall-clock ``fetched_at``."""
        lifetime = self._error_ttl_s if result.error else self._ttl_s + self._stale_s
        return SharedRow(
            result.total_emissions, result.inventory_coverage, result.error,
            fetched_at, fetched_at + lifetime,
        )

    def lifetime_left(self, row: SharedRow) -> float:
        """Seconds ``row`` may still be kept in the in-process cache (never past Redis's)."""
        return self._lifetime_left(row, self._wall_clock())

    def _settle_claim(self, key: RowKey, lease: _Lease, answer: Any, sent: float) -> Claim:
        kind = answer[0] if isinstance(answer, list) and answer else None
        if kind == 1:
            row = decode(answer[1])
            if row is not None and self._lifetime_left(row, self._wall_clock()) > 0:
                return row
            return FETCH  # the script's quick check passed but the envelope is bad: refetch
        if kind == 2:
            self._held[key] = lease
            return FETCH
        if kind == 3:
            left = int(answer[1]) / 1000 if len(answer) > 1 else MAX_POLL_S
            self._lease_ends[key] = sent + left
            return WAIT
        return FETCH

    def _run(self, op: str, call: Callable[[], Any]) -> Any:
        """Run one Redis round trip through the breaker; None when it failed."""
        started = time.perf_counter()
        try:
            result = call()
        except redis.exceptions.ResponseError as exc:
            # Redis answered: it is up. OOM (maxmemory with noeviction) refuses writes only.
            self._breaker.record_success()
            kind = "full" if "maxmemory" in str(exc) else "response_error"
            prometheus_metrics.SHARED_ERRORS.labels(kind).inc()
            if kind == "full":
                self._note_full(True)
            else:
                _LOG.warning("redis refused a command: %s", exc, extra={"op": op})
            return None
        except (redis.exceptions.RedisError, OSError) as exc:
            if _pool_exhausted(exc):
                # Every pooled connection is busy: this worker is overloaded, Redis is not
                # down, so the breaker is not told.
                self._breaker.record_success()
                prometheus_metrics.SHARED_ERRORS.labels("pool_exhausted").inc()
                return None
            kind = "timeout" if isinstance(exc, redis.exceptions.TimeoutError) else "connection"
            prometheus_metrics.SHARED_ERRORS.labels(kind).inc()
            # The breaker's transitions are the log lines; one per failure would flood.
            _LOG.debug("redis %s failed: %s", op, exc, extra={"op": op, "kind": kind})
            self._breaker.record_failure()
            return None
        finally:
            prometheus_metrics.SHARED_LATENCY.labels(op).observe(time.perf_counter() - started)
        self._breaker.record_success()
        if op in ("claim", "write") and self._full_since is not None:
            self._note_full(False)
        return result

    def _note_full(self, full: bool) -> None:
        if full and self._full_since is None:
            self._full_since = time.monotonic()
            _LOG.warning(
                "shared tier degraded: redis is full, new rows are not shared",
                extra={"redis": self._description},
            )
        elif not full and self._full_since is not None:
            self._full_since = None
            _LOG.info("shared tier recovered: redis accepts writes again",
                      extra={"redis": self._description})

    def _mget(self, names: list[str]) -> list[bytes | None]:
        if self._cluster:
            values: list[bytes | None] = self._client.mget_nonatomic(names)
            return values
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(names), READ_CHUNK):
            pipe.mget(names[start : start + READ_CHUNK])
        return [value for chunk in pipe.execute() for value in chunk]

    def _claim(self, keys: list[RowKey], tokens: list[str], fresh_after_ms: int) -> list[Any]:
        calls: list[_Call] = []
        for key, token in zip(keys, tokens, strict=True):
            name = key_name(self._prefix, key)
            calls.append(((name, name + ":lease"), (token, self._lease_ms, fresh_after_ms)))
        return self._scripts(_CLAIM, calls)

    def _write(self, batch: list[tuple[RowKey, SharedRow, str]]) -> list[Any]:
        now = self._wall_clock()
        calls: list[_Call] = []
        for key, row, token in batch:
            name = key_name(self._prefix, key)
            left = max(0.001, row.expires_at - now)
            ms = max(1, round(left * 1000 * (1 + TTL_JITTER * _random())))
            calls.append(
                ((name, name + ":lease"), (token, encode(row), ms, round(row.fetched_at * 1000)))
            )
        return self._scripts(_WRITE, calls)

    def _release(self, leases: list[tuple[RowKey, str]]) -> list[Any]:
        calls: list[_Call] = [
            ((key_name(self._prefix, key) + ":lease",), (token,)) for key, token in leases
        ]
        return self._scripts(_RELEASE, calls)

    def _scripts(self, script: _Script, calls: list[_Call]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline; its results, in order.

        By SHA (watchers poll many rows often: the script's text each time would be most of the
        traffic). Calls that a server answers NOSCRIPT (restarted, flushed, a new Cluster node)
        are sent again by text, which also loads the script there; the others already ran and
        are not repeated. Scripts go through ``execute_command``: a Cluster pipeline has no
        ``eval()``, and routes EVAL by its keys (one row's keys share a hash tag: one slot).
        """
        answers = self._pipeline(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        )
        missing = [
            i for i, answer in enumerate(answers)
            if isinstance(answer, redis.exceptions.NoScriptError)
        ]
        if missing:
            again = self._pipeline(
                [("EVAL", script.text, len(calls[i][0]), *calls[i][0], *calls[i][1])
                 for i in missing]
            )
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers: list[Any] = pipe.execute(raise_on_error=False)
        return answers

    # --- watching other holders' leases --------------------------------------------------------

    def _next_look(self, key: RowKey, backoff: float) -> float:
        """Seconds until the next look at a watched row: ``backoff``, but never later than
        just after the holder's lease runs out (as the last claim read it), so that a holder
        that died is replaced the moment its lease lapses. The backoff itself goes on
        growing: a lease taken over by another watcher is not polled in a tight loop."""
        ends = self._lease_ends.pop(key, math.inf)
        return max(0.0, min(backoff, ends + LEASE_END_MARGIN_S - time.monotonic()))

    def _schedule_poll(self, key: RowKey, delay: float) -> None:
        self._sequence += 1
        heapq.heappush(self._schedule, (time.monotonic() + delay, self._sequence, key))
        self._wake.set()

    def _watch_loop(self) -> None:
        while self._watched:
            due = self._due_keys()
            if not due:
                self._wake.clear()
                delay = self._schedule[0][0] - time.monotonic() if self._schedule else 1.0
                self._wake.wait(max(0.0, delay))
                continue
            self._poll(due)
        self._watcher = None

    def _due_keys(self) -> list[RowKey]:
        now = time.monotonic()
        due: list[RowKey] = []
        while self._schedule and self._schedule[0][0] <= now and len(due) < POLL_CHUNK:
            _, _, key = heapq.heappop(self._schedule)
            if key in self._watched and key not in due:
                due.append(key)
        return due

    def _poll(self, keys: list[RowKey]) -> None:
        # A lease taken here was left by a holder that never wrote: it expired or was released.
        claims = self._claim_keys(keys, "expired")
        for key, claim in zip(keys, claims, strict=True):
            watch = self._watched.get(key)
            if watch is None:
                continue
            if isinstance(claim, SharedRow):
                del self._watched[key]
                prometheus_metrics.SHARED_LEASES.labels("waited").inc()
                watch.on_value(key, claim)
            elif claim is WAIT:
                backoff = min(MAX_POLL_S, watch.delay * 2)
                self._watched[key] = watch._replace(delay=backoff)
                self._schedule_poll(key, self._next_look(key, backoff))
            else:
                del self._watched[key]
                watch.on_fetch(key)


class _Lease(NamedTuple):
    token: str
    taken_at: float  # wall clock


class _Watch(NamedTuple):
    on_value: Callable[[RowKey, SharedRow], None]
    on_fetch: Callable[[RowKey], None]
    delay: float


def _pool_exhausted(exc: BaseException) -> bool:
    """True for redis-py's "no connection available" from a blocking pool that stayed full."""
    return isinstance(exc, redis.exceptions.ConnectionError) and "No connection available" in str(
        exc
    )


def _random() -> float:
    return int.from_bytes(os.urandom(2), "big") / 65535


def build(config: Config) -> SharedTier | None:
    """The tier ``config`` asks for, or None when ``REDIS_URL`` is empty."""
    if not config.redis_url:
        return None
    description = redact_url(config.redis_url)
    breaker = CircuitBreaker(
        config.redis_breaker_failures,
        config.redis_breaker_cooldown_s,
        on_transition=_transition_logger(description),
    )
    return SharedTier(
        connect(config),
        prefix=config.redis_prefix,
        lease_s=config.redis_lease_ms / 1000,
        ttl_s=config.cache_ttl_seconds,
        stale_s=config.cache_stale_seconds,
        error_ttl_s=config.error_ttl,
        breaker=breaker,
        cluster=config.redis_cluster,
        description=description,
    )


def _transition_logger(description: str) -> Callable[[State, State], None]:
    """One log line when the tier degrades and one when it recovers, never one per request."""

    def on_transition(before: State, after: State) -> None:
        prometheus_metrics.SHARED_BREAKER_TRANSITIONS.labels(to=after).inc()
        prometheus_metrics.SHARED_BREAKER_OPEN.set(0 if after == "closed" else 1)
        if before == "closed" and after == "open":
            _LOG.warning(
                "shared tier degraded: redis unreachable, serving from memory and upstream",
                extra={"redis": description},
            )
        elif after == "closed":
            _LOG.info("shared tier recovered: redis reachable again", extra={"redis": description})

    return on_transition
