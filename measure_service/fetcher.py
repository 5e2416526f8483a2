"""Answers rows from the cache, and fetches the misses upstream in the background.

One Fetcher per worker. A miss joins the single-flight table (one fetch per key, whoever asks),
then the micro-batcher (one upstream call for many keys with the same query parameters). The
fetch fills the cache whatever happens to the request that started it; a request only waits on
the shared results, for at most its wait window.

Row statuses it produces:

- ``hit``: a fresh cached value (in memory, or in the shared tier); ``error``: a cached or
  fetched row-level upstream error;
- ``stale``: a cached value past its TTL but within the stale limit; one refresh is started;
- ``fetched``: a miss whose fetch finished within the wait window;
- ``pending``: a miss whose fetch is still under way when the window ends;
- ``unavailable``: a miss that is not being fetched: the pending queue is full, the breaker is
  open, or the fetch it waited on failed (timeouts, 5xx, ...). A failed fetch is never cached,
  so the next request for the key tries again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import gevent
from gevent.event import AsyncResult

from measure_service import metrics
from measure_service.batcher import Batcher
from measure_service.logs import current_trace_id
from measure_service.rows import QueryParams, RowKey, RowStatus
from measure_service.shared_tier import FETCH, WAIT, SharedRow, SharedTier
from measure_service.singleflight import SingleFlight
from measure_service.upstream import RowResult, UpstreamError

_LOG = logging.getLogger(__name__)
# Trace ids listed on a batch's log line; a 500-row batch must not make a 20 KB line.
_MAX_TRACE_IDS_LOGGED = 20


class AnswerCache(Protocol):
    """The part of ``weighted_cache.Cache`` the fetcher uses."""

    def get(self, key: RowKey) -> CachedAnswer | None: ...
    def set(
        self, key: RowKey, value: CachedAnswer, cost: float | None = None, ttl: float | None = None
    ) -> bool: ...
    def ttl(self, key: RowKey) -> float | None: ...


class Upstream(Protocol):
    """The part of ``UpstreamClient`` the fetcher uses."""

    def measure(
        self, rows: Sequence[Mapping[str, Any]], params: Mapping[str, str]
    ) -> Mapping[str, RowResult]: ...


class Breaker(Protocol):
    """Read-only view of the circuit breaker: an open one refuses misses without queueing."""

    @property
    def state(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What the cache holds for one key: upstream's answer, when it came, and what it costs."""

    total_emissions: float | None
    inventory_coverage: str | None
    error: str | None
    fetched_at: float
    cost: float


class RowOutcome(NamedTuple):
    """The answer for one row: its status and, when known, the cached entry.

    A NamedTuple rather than a frozen dataclass: one is built per row on the hit path, and a
    tuple is much cheaper to build.
    """

    status: RowStatus
    entry: CachedAnswer | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcomes of one request's rows, in order, and the counts the access log reports."""

    outcomes: list[RowOutcome]
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class FetcherSettings:
    """Tuning of one Fetcher; the app fills it from Config."""

    ttl_s: float
    stale_s: float
    error_ttl_s: float
    batch_window_s: float
    batch_rows: int
    max_pending_rows: int
    concurrency: int
    # How long requests wait for their misses (0: nobody waits); the batcher may hold a batch
    # behind one in flight only when that cannot cost a waiting request its answer.
    wait_s: float = 0.0


class FetchFailed(Exception):
    """A fetch ended without an answer for the key (the upstream call failed)."""


_PENDING = RowOutcome("pending")
_UNAVAILABLE = RowOutcome("unavailable")


class Fetcher:
    """Cache lookups plus coalesced, batched, bounded background fetches for one worker."""

    def __init__(
        self,
        cache: AnswerCache,
        upstream: Upstream,
        settings: FetcherSettings,
        *,
        breaker: Breaker | None = None,
        shared: SharedTier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve from ``cache`` and fetch through ``upstream``; ``clock`` dates the entries.

        With ``shared``, misses are looked up there before they go upstream, and fetches are
        claimed there first, so that one worker of all those sharing it fetches each row.
        """
        self._cache = cache
        self._shared = shared
        self._upstream = upstream
        self._settings = settings
        self._breaker = breaker
        self._clock = clock
        self._flights: SingleFlight[RowKey, CachedAnswer] = SingleFlight()
        # Lowest cost (highest weight) asked for each key in flight: the value is stored with it.
        self._costs: dict[RowKey, float] = {}
        self._batcher: Batcher[QueryParams, tuple[RowKey, str | None]] = Batcher(
            self._send,
            window_s=settings.batch_window_s,
            max_items=settings.batch_rows,
            concurrency=settings.concurrency,
            answer_within_s=settings.wait_s,
        )

    def lookup(self, rows: Sequence[tuple[RowKey, float]], wait_s: float = 0.0) -> Lookup:
        """Answer each ``(key, cost)`` from the cache, fetching misses; wait up to ``wait_s``.

        Returns the moment the last miss resolves, or when ``wait_s`` runs out; the fetches go
        on after that and still fill the cache.
        """
        now = self._clock()
        settings = self._settings
        outcomes: list[RowOutcome] = []
        waits: list[tuple[int, AsyncResult]] = []
        hits = stale = coalesced = 0
        refused: dict[str, int] = {}  # a plain dict: a Counter is slower to build
        missed: list[tuple[int, RowKey, float]] = []
        status: RowStatus
        for key, cost in rows:
            entry = self._cache.get(key)
            if entry is not None:
                if entry.error is not None:
                    status = "error"
                elif now - entry.fetched_at < settings.ttl_s:
                    status = "hit"
                else:
                    status = "stale"
                    stale += 1
                    self._refresh(key, min(cost, entry.cost))
                hits += status != "stale"
                if cost < entry.cost:
                    entry = self._lower_cost(key, entry, cost)
                outcomes.append(RowOutcome(status, entry))
                continue
            missed.append((len(outcomes), key, cost))
            outcomes.append(_PENDING)

        misses = len(missed)  # in memory; the shared tier may still answer them
        shared = 0
        if missed and self._shared is not None:
            missed, shared, shared_stale = self._read_shared(missed, outcomes)
            stale += shared_stale
        for index, key, cost in missed:
            result = self._flights.join(key)
            if result is not None:
                coalesced += 1
                self._costs[key] = min(self._costs.get(key, cost), cost)
            else:
                reason = self._refusal()
                if reason is not None:
                    refused[reason] = refused.get(reason, 0) + 1
                    outcomes[index] = _UNAVAILABLE
                    continue
                result = self._start(key, cost)
            waits.append((index, result))

        if waits and wait_s > 0:
            self._wait(waits, wait_s)
        for index, result in waits:
            if not result.ready():
                continue
            if result.successful():
                entry = result.value
                status = "error" if entry.error is not None else "fetched"
                outcomes[index] = RowOutcome(status, entry)
            else:
                outcomes[index] = _UNAVAILABLE
                reason = _failure_reason(result.exception)
                refused[reason] = refused.get(reason, 0) + 1
        _count(hits, stale, misses, coalesced, refused)
        return Lookup(outcomes, hits + stale + shared, misses - shared)

    def close(self) -> None:
        """Stop batching; every fetch still queued fails so that no waiter hangs."""
        self._batcher.close()
        if self._shared is not None:
            self._shared.close()
        for key in self._flights.in_flight():
            self._costs.pop(key, None)
            self._flights.fail(key, FetchFailed("the service is shutting down"))

    def _refusal(self) -> str | None:
        """Why a new fetch may not start now, or None when it may."""
        if self._breaker is not None and self._breaker.state == "open":
            return "breaker_open"
        if len(self._flights) >= self._settings.max_pending_rows:
            return "queue_full"
        return None

    def _start(self, key: RowKey, cost: float) -> AsyncResult:
        result = self._flights.start(key)
        self._costs[key] = cost
        self._batcher.add(key.params, (key, current_trace_id()))
        return result

    def _refresh(self, key: RowKey, cost: float) -> None:
        """Start one background refresh of a stale key, unless one runs or none may start."""
        if key not in self._flights and self._refusal() is None:
            self._start(key, cost)

    # --- the shared tier ----------------------------------------------------------------------

    def _read_shared(
        self, missed: list[tuple[int, RowKey, float]], outcomes: list[RowOutcome]
    ) -> tuple[list[tuple[int, RowKey, float]], int, int]:
        """Answer the misses the shared tier holds, in ``outcomes``; return the rest, how many
        it answered and how many of those were stale. Keys with a fetch in flight here are not
        read: they wait for it."""
        assert self._shared is not None
        unread = [key for _, key, _ in missed if key not in self._flights]
        found = self._shared.read(unread) if unread else {}
        if not found:
            return missed, 0, 0
        rest: list[tuple[int, RowKey, float]] = []
        answered = stale = 0
        for index, key, cost in missed:
            row = found.get(key)
            if row is None:
                rest.append((index, key, cost))
                continue
            entry = self._remember(key, row, cost)
            answered += 1
            if entry.error is not None:
                outcomes[index] = RowOutcome("error", entry)
            elif self._clock() - entry.fetched_at < self._settings.ttl_s:
                outcomes[index] = RowOutcome("hit", entry)
            else:
                outcomes[index] = RowOutcome("stale", entry)
                stale += 1
                self._refresh(key, cost)
        return rest, answered, stale

    def _remember(self, key: RowKey, row: SharedRow, cost: float) -> CachedAnswer:
        """``row`` as an entry of the in-process cache, stored there until Redis drops it."""
        assert self._shared is not None
        fetched_at = self._clock() - self._shared.age(row)
        entry = CachedAnswer(
            row.total_emissions, row.inventory_coverage, row.error, fetched_at, cost
        )
        self._cache.set(key, entry, cost=cost, ttl=self._shared.lifetime_left(row))
        return entry

    def _claim(
        self, items: list[tuple[RowKey, str | None]]
    ) -> list[tuple[RowKey, str | None]]:
        """The items this worker fetches itself; the others are answered from the shared tier
        now, or when the worker holding their lease writes them."""
        assert self._shared is not None
        try:
            claims = self._shared.claim([key for key, _ in items])
        except Exception:
            # Redis failures are handled inside; anything else must not leave rows unresolved.
            _LOG.exception("shared-tier claim crashed; fetching the batch here")
            return items
        mine = []
        for item, claim in zip(items, claims, strict=True):
            if claim is FETCH:
                mine.append(item)
            elif claim is WAIT:
                self._shared.watch(item[0], self._settle, self._fetch_again)
            else:
                assert isinstance(claim, SharedRow)
                self._settle(item[0], claim)
        return mine

    def _settle(self, key: RowKey, row: SharedRow) -> None:
        """Resolve the fetch of ``key`` with a row another worker fetched."""
        if key in self._flights:
            self._flights.resolve(key, self._remember(key, row, self._costs.pop(key, 1)))

    def _fetch_again(self, key: RowKey) -> None:
        """Fetch ``key`` here after all: its lease lapsed (now ours) or Redis failed."""
        if key in self._flights:
            self._batcher.add(key.params, (key, None))

    def _lower_cost(self, key: RowKey, entry: CachedAnswer, cost: float) -> CachedAnswer:
        """Re-store ``entry`` at the lower ``cost`` a heavier row asks for, keeping its expiry."""
        try:
            remaining = self._cache.ttl(key)
        except KeyError:
            return entry
        if remaining is not None and remaining <= 0:
            return entry
        cheaper = dataclasses.replace(entry, cost=cost)
        if self._cache.set(key, cheaper, cost=cost, ttl=remaining):
            return cheaper
        return entry

    def _wait(self, waits: list[tuple[int, AsyncResult]], wait_s: float) -> None:
        started = time.monotonic()
        # The timeout bounds only this request's wait; the fetches are other greenlets.
        with gevent.Timeout(wait_s, False):
            for _, result in waits:
                result.wait()
        metrics.WAIT_SECONDS.observe(time.monotonic() - started)
        done = all(result.ready() for _, result in waits)
        metrics.WAIT_OUTCOMES.labels("all_fetched" if done else "timed_out").inc()

    def _send(self, params: QueryParams, items: list[tuple[RowKey, str | None]]) -> None:
        """Fetch one batch and resolve every key in it, whatever happens."""
        if self._shared is not None:
            items = self._claim(items)
            if not items:
                return
        keys = [key for key, _ in items]
        rows = [key.upstream_row(str(index)) for index, key in enumerate(keys)]
        settled: set[int] = set()
        failure: BaseException = FetchFailed("the upstream fetch failed")
        try:
            answers = self._upstream.measure(rows, params.upstream())
            if self._shared is not None:
                # Shared before anyone is answered: a client told "fetched" here then finds
                # the row on every other worker too.
                self._shared.write(
                    (key, answers[str(i)]) for i, key in enumerate(keys) if str(i) in answers
                )
            now = self._clock()
            rejected = 0
            for index, key in enumerate(keys):
                answer = answers.get(str(index))
                if answer is None:
                    continue  # settled as a failure below
                cost = self._costs.pop(key, 1)
                entry = CachedAnswer(
                    answer.total_emissions, answer.inventory_coverage, answer.error, now, cost
                )
                settings = self._settings
                ttl = settings.error_ttl_s if entry.error else settings.ttl_s + settings.stale_s
                if not self._cache.set(key, entry, cost=cost, ttl=ttl):
                    rejected += 1
                settled.add(index)
                self._flights.resolve(key, entry)
            if rejected:
                metrics.CACHE_REJECTED.inc(rejected)
            _LOG.info(
                "upstream batch fetched",
                extra={"rows": len(rows), "params": params.upstream(), **_trace_ids(items)},
            )
        except UpstreamError as exc:
            failure = exc
            # A refusal by the open breaker is expected while upstream is down: no warning each.
            level = logging.DEBUG if exc.outcome == "breaker_open" else logging.WARNING
            _LOG.log(
                level,
                "upstream batch failed: %s",
                exc.outcome,
                extra={"rows": len(rows), "outcome": exc.outcome, **_trace_ids(items)},
            )
        except Exception:
            _LOG.exception("upstream batch crashed", extra={"rows": len(rows)})
        finally:
            failed = [key for index, key in enumerate(keys) if index not in settled]
            for key in failed:
                self._costs.pop(key, None)
                self._flights.fail(key, failure)
            if failed and self._shared is not None:
                self._shared.release(failed)


def _failure_reason(error: BaseException | None) -> str:
    """The ``unavailable`` reason of a failed fetch: the breaker refused it, or it failed."""
    if isinstance(error, UpstreamError) and error.outcome == "breaker_open":
        return "breaker_open"
    return "fetch_failed"


def _trace_ids(items: list[tuple[RowKey, str | None]]) -> dict[str, list[str]]:
    """The distinct trace ids of the requests whose rows are in a batch."""
    ids = list(dict.fromkeys(trace for _, trace in items if trace is not None))
    return {"trace_ids": ids[:_MAX_TRACE_IDS_LOGGED]}


def _count(hits: int, stale: int, misses: int, coalesced: int, refused: dict[str, int]) -> None:
    """Record one request's counts: one increment per metric, never one per row."""
    if hits:
        metrics.CACHE_HITS.inc(hits)
    if stale:
        metrics.CACHE_STALE.inc(stale)
    if misses:
        metrics.CACHE_MISSES.inc(misses)
    if coalesced:
        metrics.UPSTREAM_COALESCED.inc(coalesced)
    for reason, count in refused.items():
        metrics.UPSTREAM_UNAVAILABLE.labels(reason).inc(count)
