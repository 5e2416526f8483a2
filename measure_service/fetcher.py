"""Answers rows from the cache, and fetches the misses upstream in the background.

One Fetcher per worker. A miss joins the single-flight table (one fetch per key, whoever asks),
then the micro-batcher (one upstream call for many keys with the same query parameters). The
fetch fills the cache whatever happens to the request that started it; a request only waits on
the shared results, for at most its wait window.

Row statuses it produces:

- ``hit``: a fresh cached value; ``error``: a cached or fetched row-level upstream error;
- ``stale``: a cached value past its TTL but within the stale limit; one refresh is started;
- ``fetched``: a miss whose fetch finished within the wait window;
- ``pending``: a miss whose fetch is still under way when the window ends;
- ``unavailable``: a miss that is not being fetched, with the reason: the client's key is over
  its fair share of upstream fetching (see ``quotas``), the breaker is open, or the fetch it
  waited on failed (timeouts, 5xx, a row missing from upstream's answer, ...). A failed fetch
  is never cached, so the next request for the key tries again.

A batch that one row's input spoils (upstream fails it, hangs on it, answers it slowly or
wrongly) is split to find that row (see ``row_isolation``): the row gets its error, cached like any
row error, and the others their answers, cached as soon as they come. A client whose rows
were at fault (or slow) has its next batches sent apart from other clients' rows for a while,
so that it pays for further bad rows itself: its batches (and the parts of its rows sent while
a batch is split) hold at most half of the upstream slots, and their latency does not steer
the adaptive limit; its calls still holding an ordinary slot are cut short and go again in
its lane.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import gevent
from gevent.event import AsyncResult

from measure_service import prometheus_metrics
from measure_service.batcher import Batcher
from measure_service.concurrency_limiter import AdaptiveLimiter, Share
from measure_service.greenlets import spawn
from measure_service.logs import current_trace_id
from measure_service.quotas import Tenant, TenantQuotas
from measure_service.row_isolation import CutShort, Isolation, Isolator, Verdicts
from measure_service.rows import QueryParams, RowKey, RowStatus
from measure_service.shared_tier import FETCH, WAIT, SharedRow, SharedTier
from measure_service.singleflight import SingleFlight
from measure_service.upstream import RowResult, UpstreamError

_LOG = logging.getLogger(__name__)
# Trace ids listed on a batch's log line; a 500-row batch must not make a 20 KB line.
_MAX_TRACE_IDS_LOGGED = 20
# How long a client whose row failed a batch has its rows batched apart from other clients'.
SUSPECT_FOR_S = 60.0


class _Cut(gevent.GreenletExit):  # type: ignore[misc]
    """Ends an upstream call whose client became a suspect (see ``Fetcher._note_suspect``)."""


class _CallInFlight:
    """An upstream call of one client's rows outside its lane, made in the current greenlet,
    which :meth:`cut` ends by raising :class:`_Cut` in it, only while it is still in the call.

    The exception is thrown from the hub (as ``gevent.Timeout`` does), when the greenlet is
    suspended: it cannot land after the call has returned. No greenlet is spawned per call: a
    spawn and a join would each wait for a turn of the event loop, which a busy worker makes
    long.
    """

    __slots__ = ("greenlet", "inside")

    def __init__(self) -> None:
        self.greenlet = gevent.getcurrent()
        self.inside = True

    def cut(self) -> None:
        gevent.get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if self.inside:
            self.greenlet.throw(_Cut)


class AnswerCache(Protocol):
    """The part of ``weighted_cache.Cache`` the fetcher uses."""

    def get(self, key: RowKey) -> CachedAnswer | None: ...
    def get_many(self, keys: Iterable[RowKey]) -> list[CachedAnswer | None]: ...
    def set(
        self, key: RowKey, value: CachedAnswer, cost: float | None = None, ttl: float | None = None
    ) -> bool: ...
    def ttl(self, key: RowKey) -> float | None: ...


class Upstream(Protocol):
    """The part of ``UpstreamClient`` the fetcher uses."""

    def measure(
        self,
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, str],
        *,
        judge: bool,
        read_timeout_s: float | None,
        observe_latency: bool,
    ) -> Mapping[str, RowResult]: ...
    def settle(self, error: UpstreamError, *, explained: bool) -> None: ...


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
    """The answer for one row: its status, the cached entry when known, and why unavailable.

    A NamedTuple rather than a frozen dataclass: one is built per row on the hit path, and a
    tuple is much cheaper to build.
    """

    status: RowStatus
    entry: CachedAnswer | None = None
    reason: str | None = None


class Lookup(NamedTuple):
    """The outcomes of one request's rows, in order, and the counts the access log reports.

    A NamedTuple, like RowOutcome: a frozen dataclass sets each field through
    ``object.__setattr__``, and one is built per request.
    """

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
    # Fair shares per client key (0: no bound) and how many keys share them.
    rows_per_s: float = 0.0
    requests_per_s: float = 0.0
    tenants: int = 1
    # Upstream retries allowed (0: a failed batch's rows are never sent again as they were).
    retries: int = 2
    # How long requests wait for their misses (0: nobody waits); the batcher may hold a batch
    # behind one in flight only when that cannot cost a waiting request its answer.
    wait_s: float = 0.0


class FetchFailed(Exception):
    """A fetch ended without an answer for the key (the upstream call failed)."""


_PENDING = RowOutcome("pending")
_new_tuple = tuple.__new__


class _Flight(NamedTuple):
    """What the fetcher keeps for a key in flight beside its waiters."""

    cost: float
    tenant: Tenant


class _Item(NamedTuple):
    """One key in a batch, with what its log line and its isolation need."""

    key: RowKey
    trace_id: str | None
    tenant: Tenant


class _BatchKey(NamedTuple):
    """A batch group: one set of query parameters, and a suspect client batched apart."""

    params: QueryParams
    apart: Tenant | None


class Fetcher:
    """Cache lookups plus coalesced, batched, bounded background fetches for one worker."""

    def __init__(
        self,
        cache: AnswerCache,
        upstream: Upstream,
        settings: FetcherSettings,
        *,
        breaker: Breaker | None = None,
        limiter: AdaptiveLimiter | None = None,
        shared: SharedTier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve from ``cache`` and fetch through ``upstream``; ``clock`` dates the entries.

        ``limiter`` bounds the upstream requests in flight (by default a fixed
        ``settings.concurrency``; the app shares an adaptive one with the upstream client).
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
        # Per key in flight: the lowest cost (highest weight) asked, since the value is stored
        # with it, and the client whose request started the fetch.
        self._in_flight: dict[RowKey, _Flight] = {}
        self._quotas = TenantQuotas(
            max_pending_rows=settings.max_pending_rows,
            rows_per_s=settings.rows_per_s,
            requests_per_s=settings.requests_per_s,
            tenants=settings.tenants,
            clock=time.monotonic,
        )
        self._isolator = Isolator(
            self._settle, confirm=settings.retries > 0, is_suspect=self._is_suspect_owner,
            on_suspect=self._note_suspect,
        )
        # Per client: its rows waiting to be sent upstream (queued in a batch, or a part of a
        # split batch waiting for its slot).
        self._unsent: dict[Tenant, int] = {}
        self._suspects: dict[Tenant, float] = {}
        self._limiter = limiter if limiter is not None else AdaptiveLimiter(settings.concurrency)
        # Per suspect client: the upstream slots its batches may hold at once.
        self._lanes: dict[Tenant, Share] = {}
        # Per client: its upstream calls of its own rows only that hold an ordinary slot (not
        # its lane), cut short when it becomes a suspect.
        self._outside_lane: dict[Tenant, set[_CallInFlight]] = {}
        self._batcher: Batcher[_BatchKey, _Item] = Batcher(
            self._send,
            gate=self._lane,
            window_s=settings.batch_window_s,
            max_items=settings.batch_rows,
            concurrency=settings.concurrency,
            answer_within_s=settings.wait_s,
            limiter=self._limiter,
        )

    def lookup(
        self,
        keys: Sequence[RowKey],
        costs: Sequence[float],
        wait_s: float = 0.0,
        tenant: Tenant = None,
    ) -> Lookup:
        """Answer each of ``keys`` from the cache, fetching misses; wait up to ``wait_s``.

        ``costs`` holds the cost each key's row asks for, in the same order. Two lists rather
        than a list of pairs: the keys go to the cache as they are, and no pair is built per
        row. Returns the moment the last miss resolves, or when ``wait_s`` runs out; the
        fetches go on after that and still fill the cache. New fetches count against
        ``tenant``'s fair shares (the client key, or None without authentication).
        """
        now = self._clock()
        ttl_s = self._settings.ttl_s
        outcomes: list[RowOutcome] = []
        waits: list[tuple[int, AsyncResult]] = []
        hits = stale = coalesced = 0
        refused: dict[str, int] = {}  # a plain dict: a Counter is slower to build
        missed: list[tuple[int, RowKey, float]] = []
        status: RowStatus
        # One read of the cache for the request: its lock is taken once, not once per row.
        entries = self._cache.get_many(keys)
        lowered: dict[RowKey, CachedAnswer] = {}  # entries an earlier row re-stored cheaper
        for key, cost, entry in zip(keys, costs, entries, strict=True):
            if entry is not None:
                if lowered:
                    # A key asked twice: the later row sees what the earlier one stored.
                    entry = lowered.get(key, entry)
                if entry.error is not None:
                    status = "error"
                elif now - entry.fetched_at < ttl_s:
                    status = "hit"
                else:
                    status = "stale"
                    stale += 1
                    self._refresh(key, min(cost, entry.cost), tenant)
                hits += status != "stale"
                if cost < entry.cost:
                    entry = lowered[key] = self._lower_cost(key, entry, cost)
                # tuple.__new__: a NamedTuple's own __new__ is a Python call, paid per row.
                outcomes.append(_new_tuple(RowOutcome, (status, entry, None)))
                continue
            missed.append((len(outcomes), key, cost))
            outcomes.append(_PENDING)

        misses = len(missed)  # in memory; the shared tier may still answer them
        shared = 0
        if missed and self._shared is not None:
            missed, shared, shared_stale = self._read_shared(missed, outcomes, tenant)
            stale += shared_stale
        # When this request stops waiting: the batcher holds no batch that would miss it. Read
        # only for misses, so that a request of hits makes no clock call for it.
        deadline = time.monotonic() + wait_s if missed else 0.0
        for index, key, cost in missed:
            result = self._flights.join(key)
            if result is not None:
                coalesced += 1
                flight = self._in_flight[key]
                if cost < flight.cost:
                    self._in_flight[key] = flight._replace(cost=cost)
            else:
                reason = self._refusal(tenant)
                if reason is not None:
                    refused[reason] = refused.get(reason, 0) + 1
                    outcomes[index] = RowOutcome("unavailable", None, reason)
                    continue
                result = self._start(key, cost, tenant, deadline)
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
                reason = _failure_reason(result.exception)
                outcomes[index] = RowOutcome("unavailable", None, reason)
                refused[reason] = refused.get(reason, 0) + 1
        _count(hits, stale, misses, coalesced, refused)
        return _new_tuple(Lookup, (outcomes, hits + stale + shared, misses - shared))

    def close(self) -> None:
        """Stop batching; every fetch still queued fails so that no waiter hangs."""
        self._batcher.close()
        if self._shared is not None:
            self._shared.close()
        for key in self._flights.in_flight():
            self._finish(key, FetchFailed("the service is shutting down"))

    def _refusal(self, tenant: Tenant) -> str | None:
        """Why ``tenant`` may not start a new fetch now, or None (its quota is then taken)."""
        if self._breaker is not None and self._breaker.state == "open":
            return "breaker_open"
        _, reason = self._quotas.admit(tenant, 1)
        return reason

    def _start(self, key: RowKey, cost: float, tenant: Tenant, deadline: float) -> AsyncResult:
        result = self._flights.start(key)
        self._in_flight[key] = _Flight(cost, tenant)
        apart = tenant if self._is_suspect(tenant) else None
        item = _Item(key, current_trace_id(), tenant)
        self._sending((tenant,), 1)
        self._batcher.add(_BatchKey(key.params, apart), item, deadline)
        return result

    def _finish(self, key: RowKey, outcome: CachedAnswer | BaseException) -> None:
        """End the fetch of ``key``: wake its waiters and give back its client's quota."""
        flight = self._in_flight.pop(key, None)
        if flight is not None:
            self._quotas.finished(flight.tenant)
        if isinstance(outcome, BaseException):
            self._flights.fail(key, outcome)
        else:
            self._flights.resolve(key, outcome)

    def _is_suspect_owner(self, owner: Hashable) -> bool:
        # Without client keys there is one owner: it is never set apart from itself.
        return owner is not None and self._is_suspect(owner)

    def _lane(self, group: _BatchKey) -> contextlib.AbstractContextManager[Any] | None:
        """What a batch of ``group`` holds beside its upstream slot: a suspect client's lane."""
        return None if group.apart is None else self._lane_of(group.apart)

    def _lane_of(self, tenant: Tenant) -> contextlib.AbstractContextManager[Any]:
        """The lane of ``tenant`` (half of the slots, see ``limiter.Share``), or nothing."""
        if tenant is None:
            return contextlib.nullcontext()
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = Share(self._limiter)
        return lane

    def _sending(self, tenants: Sequence[Tenant], change: int) -> None:
        """Count ``tenants``' rows (one entry per row) as waiting to be sent, or no longer."""
        for tenant in tenants:
            left = self._unsent.get(tenant, 0) + change
            if left > 0:
                self._unsent[tenant] = left
            else:
                self._unsent.pop(tenant, None)

    def _outlived(self, owner: Hashable, left: float) -> None:
        """A call of ``owner``'s rows that left at ``left`` is still unanswered after the short
        read timeout (or a multiple of it): set ``owner`` apart if it may be keeping another
        client from its answers."""
        others_wait = any(tenant != owner for tenant in self._unsent)
        if others_wait or self._isolator.answered_others_since(left, {owner}):
            self._note_suspect(owner)

    def _is_suspect(self, tenant: Tenant) -> bool:
        until = self._suspects.get(tenant)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._suspects[tenant]
        return False

    def _refresh(self, key: RowKey, cost: float, tenant: Tenant) -> None:
        """Start one background refresh of a stale key for ``tenant``, unless one runs or none
        may start (nobody waits for it)."""
        if key not in self._flights and self._refusal(tenant) is None:
            self._start(key, cost, tenant, time.monotonic())

    # --- the shared tier ----------------------------------------------------------------------

    def _read_shared(
        self, missed: list[tuple[int, RowKey, float]], outcomes: list[RowOutcome], tenant: Tenant
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
                self._refresh(key, cost, tenant)
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

    def _claim(self, items: list[_Item]) -> list[_Item]:
        """The items this worker fetches itself; the others are answered from the shared tier
        now, or when the worker holding their lease writes them."""
        assert self._shared is not None
        try:
            claims = self._shared.claim([item.key for item in items])
        except Exception:
            # Redis failures are handled inside; anything else must not leave rows unresolved.
            _LOG.exception("shared-tier claim crashed; fetching the batch here")
            return items
        mine = []
        for item, claim in zip(items, claims, strict=True):
            if claim is FETCH:
                mine.append(item)
            elif claim is WAIT:
                self._shared.watch(item.key, self._settle_shared, self._fetch_again)
            else:
                assert isinstance(claim, SharedRow)
                self._settle_shared(item.key, claim)
        return mine

    def _settle_shared(self, key: RowKey, row: SharedRow) -> None:
        """Resolve the fetch of ``key`` with a row another worker fetched."""
        if key in self._flights:
            flight = self._in_flight.get(key)
            self._finish(key, self._remember(key, row, 1 if flight is None else flight.cost))

    def _fetch_again(self, key: RowKey) -> None:
        """Fetch ``key`` here after all: its lease lapsed (now ours) or Redis failed.

        At once: its callers have waited for another worker's fetch already, and a batch
        window or hold would only add to that.
        """
        flight = self._in_flight.get(key)
        if key in self._flights and flight is not None:
            item = _Item(key, None, flight.tenant)
            self._sending((flight.tenant,), 1)
            self._batcher.add(_BatchKey(key.params, None), item, time.monotonic(), at_once=True)

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
        prometheus_metrics.WAIT_SECONDS.observe(time.monotonic() - started)
        done = all(result.ready() for _, result in waits)
        prometheus_metrics.WAIT_OUTCOMES.labels("all_fetched" if done else "timed_out").inc()

    def _send(self, group: _BatchKey, items: list[_Item]) -> bool:
        """Fetch one batch (in the batcher's upstream slot) and resolve every key in it.

        A batch failed for its rows' input goes on being split in a greenlet of its own, each
        send taking a slot like any batch: the batches behind it need not wait for that.
        Returns False when the first send failed (its duration is no answer time to learn).
        """
        self._sending([item.tenant for item in items], -1)
        if self._shared is not None:
            items = self._claim(items)
            if not items:
                return True
        params = group.params.upstream()
        took: list[float] = []
        isolation: Isolation | None = None
        handed_over = False
        try:
            isolation = self._isolator.begin(
                [item.tenant for item in items],
                lambda positions, timeout_s: self._measure(
                    params, items, positions, took, timeout_s, in_lane=group.apart is not None
                ),
                functools.partial(self._store, [item.key for item in items]),
            )
            if not isolation.done:
                spawn(self._isolate, params, items, isolation, took)
                handed_over = True
        except Exception:
            _LOG.exception("upstream batch crashed", extra={"rows": len(items)})
        finally:
            if not handed_over:
                self._conclude(params, items, isolation, took)
        return isolation is not None and isolation.answered_first

    def _isolate(
        self, params: dict[str, str], items: list[_Item], isolation: Isolation, took: list[float]
    ) -> None:
        """Split a failed batch until every row is judged, then resolve its keys."""

        def send(positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
            # A part of a suspect client's rows holds its lane, as its batches do.
            owners = {items[position].tenant for position in positions}
            owner = next(iter(owners)) if len(owners) == 1 else None
            in_lane = self._is_suspect_owner(owner)
            lane = self._lane_of(owner if in_lane else None)
            tenants = [items[position].tenant for position in positions]
            # In the order the batches were first sent: a part must not starve behind every
            # new batch (its rows' callers come back for them).
            self._sending(tenants, 1)
            try:
                with lane, self._limiter.slot(isolation.started):
                    self._sending(tenants, -1)
                    tenants = []
                    return self._measure(
                        params, items, positions, took, timeout_s, in_lane=in_lane
                    )
            finally:
                self._sending(tenants, -1)

        try:
            isolation.go_on(send)
        except Exception:
            _LOG.exception("upstream batch crashed", extra={"rows": len(items)})
        finally:
            self._conclude(params, items, isolation, took)

    def _conclude(
        self, params: dict[str, str], items: list[_Item], isolation: Isolation | None,
        took: list[float],
    ) -> None:
        """Cache the answers of a finished batch, log it, and fail every key left unanswered."""
        verdicts = isolation.verdicts if isolation is not None else Verdicts()
        delivered = isolation.delivered if isolation is not None else set()
        keys = [item.key for item in items]
        try:
            self._store(keys, {index: answer for index, answer in verdicts.answers.items()
                               if index not in delivered})
            if verdicts.suspects:
                self._note_suspects(items, verdicts)
            failure = next(iter(verdicts.failures.values()), None)
            if failure is None and isolation is not None:
                _LOG.info(
                    "upstream batch fetched",
                    extra={"rows": len(items), "params": params, "sends": verdicts.sends,
                           "upstream_ms": round(sum(took) * 1000, 1), **_trace_ids(items)},
                )
            elif failure is not None:
                self._log_failure(failure, items, verdicts)
        finally:
            failed = [index for index in range(len(keys)) if index not in verdicts.answers]
            for index in failed:
                self._finish(
                    keys[index],
                    verdicts.failures.get(index) or FetchFailed("the upstream fetch failed"),
                )
            if failed and self._shared is not None:
                self._shared.release([keys[index] for index in failed])

    def _measure(
        self,
        params: dict[str, str],
        items: list[_Item],
        positions: Sequence[int],
        took: list[float],
        timeout_s: float | None = None,
        *,
        in_lane: bool = False,
    ) -> dict[int, RowResult]:
        """One upstream request for the batch rows at ``positions``; answers by position.

        Appends to ``took`` how long the upstream client took, retries included. ``timeout_s``
        shortens the read timeout. A request of suspects' rows only says nothing of upstream's
        speed: its latency does not steer the adaptive limit. A request of one client's rows
        outside its lane (``in_lane`` False) is cut short, raising :class:`CutShort`, if that
        client becomes a suspect meanwhile.
        """
        by_tenant: dict[Tenant, int] = {}
        for position in positions:
            tenant = items[position].tenant
            by_tenant[tenant] = by_tenant.get(tenant, 0) + 1
        owner = next(iter(by_tenant)) if len(by_tenant) == 1 else None
        if not in_lane and self._is_suspect_owner(owner):
            raise CutShort()  # it became a suspect while this batch waited for its slot
        rows = [items[position].key.upstream_row(str(position)) for position in positions]
        self._quotas.charge_request(by_tenant)
        call = functools.partial(
            self._upstream.measure, rows, params, judge=True, read_timeout_s=timeout_s,
            observe_latency=not all(self._is_suspect_owner(tenant) for tenant in by_tenant),
        )
        started = time.perf_counter()
        try:
            # One client key has no one to be set apart from: its calls are never cut.
            cuttable = owner is not None and not in_lane and self._settings.tenants > 1
            answers = self._cuttable(owner, call) if cuttable else call()
        finally:
            took.append(time.perf_counter() - started)
        return {
            position: answers[str(position)]
            for position in positions
            if str(position) in answers
        }

    def _cuttable(
        self, owner: Hashable, call: Callable[[], Mapping[str, RowResult]]
    ) -> Mapping[str, RowResult]:
        """Run ``call`` so that ``owner`` becoming a suspect ends it (see _note_suspect).

        A call that outlives the short read timeout of a send of several clients' rows (see
        ``row_isolation``), counted from when it left, makes ``owner`` a suspect if another
        client's send was answered meanwhile or another client's rows wait to be sent (then or
        at any later multiple of that timeout): this call may hold the slot those rows need,
        so that no answer of theirs could come.
        """
        in_flight = _CallInFlight()
        calls = self._outside_lane.setdefault(owner, set())
        calls.add(in_flight)
        # Looked at again every short timeout: other clients' rows may start waiting later.
        deadline_s = self._isolator.deadline_s()
        watch = gevent.get_hub().loop.timer(deadline_s, deadline_s)
        watch.start(self._outlived, owner, time.monotonic())
        try:
            return call()
        except _Cut:
            prometheus_metrics.UPSTREAM_CUT.inc()
            _LOG.info("upstream call cut short: its client is set apart, its rows go again")
            raise CutShort() from None
        finally:
            in_flight.inside = False
            watch.close()
            calls.discard(in_flight)
            if not calls and self._outside_lane.get(owner) is calls:
                del self._outside_lane[owner]

    def _store(self, keys: list[RowKey], answers: Mapping[int, RowResult]) -> None:
        """Cache every answered key (and share it) and wake its waiters."""
        if self._shared is not None and answers:
            # Shared before anyone is answered: a client told "fetched" here then finds the
            # row on every other worker too.
            self._shared.write((keys[index], answer) for index, answer in answers.items())
        now = self._clock()
        settings = self._settings
        rejected = 0
        for index, answer in answers.items():
            key = keys[index]
            flight = self._in_flight.get(key)
            cost = 1 if flight is None else flight.cost
            entry = CachedAnswer(
                answer.total_emissions, answer.inventory_coverage, answer.error, now, cost
            )
            ttl = settings.error_ttl_s if entry.error else settings.ttl_s + settings.stale_s
            if not self._cache.set(key, entry, cost=cost, ttl=ttl):
                rejected += 1
            self._finish(key, entry)
        if rejected:
            prometheus_metrics.CACHE_REJECTED.inc(rejected)

    def _note_suspect(self, tenant: Hashable) -> None:
        """Batch a client whose rows spoiled a batch apart from the others for a while.

        Its calls still holding an ordinary slot are cut short and sent again in its lane: a
        row that makes upstream hang would otherwise hold that slot for the whole read
        timeout, and a few of them every slot the other clients need.
        """
        if tenant is None:
            return
        self._suspects[tenant] = time.monotonic() + SUSPECT_FOR_S
        for call in list(self._outside_lane.pop(tenant, ())):
            call.cut()

    def _note_suspects(self, items: list[_Item], verdicts: Verdicts) -> None:
        """Batch the clients whose rows spoiled a batch apart from the others for a while."""
        for tenant in verdicts.suspects:
            self._note_suspect(tenant)
        if not verdicts.culprits:
            return
        prometheus_metrics.UPSTREAM_ISOLATED_ROWS.inc(len(verdicts.culprits))
        _LOG.warning(
            "upstream failed a batch because of rows: cached as their errors",
            extra={"rows": len(items), "culprits": len(verdicts.culprits),
                   "sends": verdicts.sends, **_trace_ids(items)},
        )

    def _log_failure(self, failure: BaseException, items: list[_Item], verdicts: Verdicts) -> None:
        outcome = failure.outcome if isinstance(failure, UpstreamError) else "failed"
        # A refusal by the open breaker is expected while upstream is down: no warning each.
        level = logging.DEBUG if outcome == "breaker_open" else logging.WARNING
        _LOG.log(
            level,
            "upstream batch failed: %s",
            outcome,
            extra={"rows": len(items), "failed_rows": len(verdicts.failures),
                   "outcome": outcome, "sends": verdicts.sends, **_trace_ids(items)},
        )

    def _settle(self, error: UpstreamError, explained: bool) -> None:
        self._upstream.settle(error, explained=explained)


def _failure_reason(error: BaseException | None) -> str:
    """The ``unavailable`` reason of a failed fetch: the breaker refused it, or it failed."""
    if isinstance(error, UpstreamError) and error.outcome == "breaker_open":
        return "breaker_open"
    return "fetch_failed"


def _trace_ids(items: list[_Item]) -> dict[str, list[str]]:
    """The distinct trace ids of the requests whose rows are in a batch."""
    ids = list(dict.fromkeys(item.trace_id for item in items if item.trace_id is not None))
    return {"trace_ids": ids[:_MAX_TRACE_IDS_LOGGED]}


_ADD_HITS = prometheus_metrics.adder(prometheus_metrics.CACHE_HITS)
_ADD_STALE = prometheus_metrics.adder(prometheus_metrics.CACHE_STALE)
_ADD_MISSES = prometheus_metrics.adder(prometheus_metrics.CACHE_MISSES)
_ADD_COALESCED = prometheus_metrics.adder(prometheus_metrics.UPSTREAM_COALESCED)


def _count(hits: int, stale: int, misses: int, coalesced: int, refused: dict[str, int]) -> None:
    """Record one request's counts: one increment per metric, never one per row."""
    if hits:
        _ADD_HITS(hits)
    if stale:
        _ADD_STALE(stale)
    if misses:
        _ADD_MISSES(misses)
    if coalesced:
        _ADD_COALESCED(coalesced)
    for reason, count in refused.items():
        prometheus_metrics.UPSTREAM_UNAVAILABLE.labels(reason).inc(count)
