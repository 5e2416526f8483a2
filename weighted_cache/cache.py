"""The public cache: a thread- and gevent-safe weighted TinyLFU cache."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    MutableMapping,
    ValuesView,
)
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

from .metrics import Metrics
from .policy import Policy
from .sketch import FrequencySketch
from .store import REMOVED, Entry, Store
from .ttl import ExpiryBuckets, Sweeper

if TYPE_CHECKING:
    import asyncio
    from types import TracebackType

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Any = object()
_READ_BUFFER = 128  # reads recorded per batch applied to the policy
_SWEEP_PER_OP = 16  # expired entries reclaimed per write, bounding its work
_MAX_DEFAULT_COUNTERS = 1 << 20

_Callback = tuple[Callable[..., Any], tuple[Any, ...]]


class Lock(Protocol):
    """What a cache needs of its lock: ``threading.Lock``'s acquire, release and ``with``."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def _check_cost(cost: Any, name: str = "cost") -> float:
    if type(cost) is int:
        if cost < 0:
            raise ValueError(f"{name} must be >= 0, got {cost}")
        return cost
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(cost).__name__}")
    if not (cost >= 0 and math.isfinite(cost)):
        raise ValueError(f"{name} must be a finite number >= 0, got {cost}")
    return cost


def _check_ttl(ttl: Any, name: str = "ttl") -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(ttl).__name__}")
    if not ttl > 0:  # also refuses NaN
        raise ValueError(f"{name} must be > 0 seconds, got {ttl}")
    return None if math.isinf(ttl) else float(ttl)


def _unhashable(key: Any) -> TypeError:
    return TypeError(f"key must be hashable, got {type(key).__name__}")


class _Flight:
    """One in-progress load that concurrent callers of the same key share."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Cache(MutableMapping[K, V]):
    """A bounded cache that admits by frequency (TinyLFU) and evicts by cost.

    ``max_cost`` is the budget in the caller's own units (entries, bytes...).
    Every ``set`` is applied before it returns; a new key may be refused when
    the cache judges it worth less than what it would evict.  Callbacks run
    after the cache's lock is released, so they may call back into the cache.

    Options: ``num_counters`` sizes the frequency sketch (about 10x the number
    of entries you expect), ``default_ttl`` applies to sets without ``ttl``,
    ``on_evict(key, value, cost)`` fires when the cache drops an entry on its
    own (capacity or expiry), ``on_reject(key, value, cost)`` when a set is
    refused, ``on_exit(key, value)`` whenever any value leaves or is refused,
    ``cost_fn(value)`` gives the cost when ``set`` gets none, ``clock``
    returns seconds (monotonic by default), ``sweep_interval`` starts a
    background sweeper that reclaims expired entries every that many seconds,
    and ``lock`` replaces the cache's own ``threading.Lock``.

    It is a ``MutableMapping``: ``cache[k] = v`` is ``set(k, v)`` with the
    default cost and TTL, iteration and the views walk a snapshot of the live
    entries taken at one instant, and nothing returns an expired entry.
    """

    def __init__(
        self,
        max_cost: int,
        *,
        num_counters: int | None = None,
        default_ttl: float | None = None,
        on_evict: Callable[[K, V, float], object] | None = None,
        on_reject: Callable[[K, V, float], object] | None = None,
        on_exit: Callable[[K, V], object] | None = None,
        cost_fn: Callable[[V], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float | None = None,
        lock: Lock | None = None,
    ) -> None:
        max_cost = self._check_max_cost(max_cost)
        if num_counters is None:
            num_counters = min(10 * max(int(max_cost), 16), _MAX_DEFAULT_COUNTERS)
        elif isinstance(num_counters, bool) or not isinstance(num_counters, int):
            raise TypeError("num_counters must be an int")
        elif num_counters <= 0:
            raise ValueError(f"num_counters must be positive, got {num_counters}")
        for name, fn in (("on_evict", on_evict), ("on_reject", on_reject),
                         ("on_exit", on_exit), ("cost_fn", cost_fn), ("clock", clock)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._default_ttl = _check_ttl(default_ttl, "default_ttl")
        self._on_evict = on_evict
        self._on_reject = on_reject
        self._on_exit = on_exit
        self._cost_fn = cost_fn
        self._clock = clock
        if lock is not None and not (
            callable(getattr(lock, "acquire", None)) and callable(getattr(lock, "release", None))
        ):
            raise TypeError(f"lock must have acquire and release, got {type(lock).__name__}")
        # Looked up at construction so gevent's monkey-patching, if applied
        # first, gives a cooperative lock.
        self._lock: Lock = threading.Lock() if lock is None else lock
        self._store = Store()
        self._data = self._store.data  # read-only here: writes go through the store
        self._policy = Policy(max_cost, FrequencySketch(num_counters))
        self._ttl = ExpiryBuckets()
        self._metrics = Metrics()
        self._reads: list[Entry] = []
        self._flights: dict[Any, _Flight] = {}
        self._tasks: dict[tuple[asyncio.AbstractEventLoop, Any], asyncio.Task[Any]] = {}
        self._sweeper = None if sweep_interval is None else Sweeper(self, sweep_interval)

    @staticmethod
    def _check_max_cost(max_cost: Any) -> int:
        if isinstance(max_cost, bool) or not isinstance(max_cost, int):
            raise TypeError(f"max_cost must be an int, got {type(max_cost).__name__}")
        if max_cost <= 0:
            raise ValueError(f"max_cost must be positive, got {max_cost}")
        return max_cost

    # -- reads ---------------------------------------------------------------

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: V) -> V: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default`` if absent or expired."""
        callbacks: list[_Callback] = []
        # acquire/release rather than ``with``: the statement's method lookups
        # cost as much as the rest of a hit.
        lock = self._lock
        lock.acquire()
        try:
            value = self._read(key, default, callbacks)
        finally:
            lock.release()
        if callbacks:
            self._run(callbacks)
        return value

    @overload
    def get_many(self, keys: Iterable[K]) -> list[V | None]: ...
    @overload
    def get_many(self, keys: Iterable[K], default: D) -> list[V | D]: ...

    def get_many(self, keys: Iterable[K], default: Any = None) -> list[Any]:
        """The value of each of ``keys``, in order, or ``default`` where absent or expired.

        What ``[cache.get(key, default) for key in keys]`` returns and counts, under one
        acquisition of the lock: a caller reading several keys at once pays for one.
        """
        callbacks: list[_Callback] = []
        read = self._read
        lock = self._lock
        lock.acquire()  # not ``with``: see get
        try:
            values = [read(key, default, callbacks) for key in keys]
        finally:
            lock.release()
        if callbacks:
            self._run(callbacks)
        return values

    def _read(self, key: K, default: Any, callbacks: list[_Callback]) -> Any:
        """One read, under the lock; what it sets off is added to ``callbacks``."""
        try:
            entry = self._data.get(key)
        except TypeError:
            raise _unhashable(key) from None
        if entry is None:
            self._metrics.misses += 1
            return default
        if not entry.expire or entry.expire > self._clock():
            # A hit is counted when the read buffer is drained (see metrics).
            reads = self._reads
            reads.append(entry)
            if len(reads) >= _READ_BUFFER:
                self._drain(callbacks)
            return entry.value
        self._metrics.misses += 1
        self._expire(entry, callbacks)
        return default

    def __getitem__(self, key: K) -> V:
        """The value for ``key``; KeyError if absent or expired.  Counts as a use."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return cast(V, value)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` holds a live value; does not count as a use."""
        return self._peek(key) is not _MISSING

    def __len__(self) -> int:
        """Number of live entries (expired ones are reclaimed first)."""
        callbacks: list[_Callback] = []
        with self._lock:
            self._reclaim(self._ttl.pop_expired(self._clock(), None, exact=True), callbacks)
            size = len(self._data)
        self._run(callbacks)
        return size

    def __iter__(self) -> Iterator[K]:
        """Keys of the entries live at the moment iteration starts.

        The snapshot is taken under the lock in one step, so other threads
        may write meanwhile without disturbing it; it does not count as uses.
        """
        return iter([key for key, _ in self._snapshot()])

    def values(self) -> ValuesView[V]:
        """A view whose iteration walks a snapshot of the live values."""
        return _ValuesView(self)

    def items(self) -> ItemsView[K, V]:
        """A view whose iteration walks a snapshot of the live ``(key, value)`` pairs."""
        return _ItemsView(self)

    def ttl(self, key: K) -> float | None:
        """Seconds until ``key`` expires, None if it never does.

        Raises KeyError if the key is absent or already expired.
        """
        with self._lock:
            entry = self._find(key)
            if entry is None:
                raise KeyError(key)
            if not entry.expire:
                return None
            remaining = entry.expire - self._clock()
            if remaining > 0:
                return remaining
        raise KeyError(key)

    # -- writes --------------------------------------------------------------

    def set(self, key: K, value: V, cost: float | None = None, ttl: float | None = None) -> bool:
        """Store ``value`` under ``key``; return False if it was refused.

        ``cost`` defaults to ``cost_fn(value)`` or 1, ``ttl`` (seconds) to
        ``default_ttl``.  Updating a present key always succeeds unless the
        new cost exceeds ``max_cost`` (the old value is then removed too).
        """
        if cost is None:
            cost = 1 if self._cost_fn is None else self._cost_of(value)
        elif type(cost) is not int or cost < 0:
            cost = _check_cost(cost)
        ttl = self._default_ttl if ttl is None else _check_ttl(ttl)
        callbacks: list[_Callback] = []
        lock = self._lock
        lock.acquire()  # not ``with``: see get
        try:
            try:
                entry = self._data.get(key)  # first, so an unhashable key fails before any change
            except TypeError:
                raise _unhashable(key) from None
            if self._reads:
                # Apply pending reads first so admission sees current frequencies.
                self._drain(callbacks)
            expiry = self._ttl
            now = self._clock() if ttl is not None or expiry.count else 0.0
            if expiry.count:
                self._reclaim(expiry.pop_expired(now, _SWEEP_PER_OP), callbacks)
            if entry is not None:
                if not entry.where:
                    entry = None  # the drain's or the write's sweep reclaimed it
                elif entry.expire and entry.expire <= now:
                    self._expire(entry, callbacks)
                    entry = None
            metrics = self._metrics
            policy = self._policy
            if cost > policy.max_cost:
                if entry is not None:
                    self._discard(entry)
                    self._exit(entry, callbacks)
                metrics.sets_rejected += 1
                self._reject(key, value, cost, callbacks)
                stored = False
            elif entry is not None:
                expire = now + ttl if ttl is not None else 0.0
                old_value, old_cost = entry.value, entry.cost
                if entry.expire != expire:
                    expiry.refile(entry, expire)
                self._store.update(entry, value, cost)
                metrics.keys_updated += 1
                self._evicted(policy.update(entry, old_cost), callbacks)
                if self._on_exit is not None and old_value is not value:
                    callbacks.append((self._on_exit, (key, old_value)))
                stored = True
            else:
                entry = Entry(key, value, cost, now + ttl if ttl is not None else 0.0)
                self._store.add(entry)
                if entry.expire:
                    expiry.add(entry)
                out = policy.add(entry)
                if out:
                    self._evicted(out, callbacks, entry)
                stored = entry.where != REMOVED
                if stored:
                    metrics.keys_added += 1
                    metrics.cost_added += cost
                else:
                    metrics.sets_rejected += 1
                    self._reject(key, value, cost, callbacks)
        finally:
            lock.release()
        if callbacks:
            self._run(callbacks)
        return stored

    def __setitem__(self, key: K, value: V) -> None:
        """``set(key, value)`` with the default cost and TTL.

        A new key refused by admission is not an error: the assignment
        returns, ``on_reject`` fires, ``metrics.sets_rejected`` counts it and
        ``key in cache`` is False (call ``set`` to learn the outcome).  A value
        whose cost exceeds ``max_cost`` can never be held: it raises
        ``ValueError`` after removing any old value of ``key``.
        """
        cost = 1 if self._cost_fn is None else self._cost_of(value)
        if not self.set(key, value, cost) and cost > self._policy.max_cost:
            raise ValueError(f"value too large: cost {cost} > max_cost {self._policy.max_cost}")

    def _cost_of(self, value: V) -> float:
        assert self._cost_fn is not None
        return _check_cost(self._cost_fn(value), "cost_fn(value)")

    def delete(self, key: K) -> bool:
        """Remove ``key``; return whether a live value was removed."""
        return self._pop(key, _MISSING) is not _MISSING

    def __delitem__(self, key: K) -> None:
        """Remove ``key``; KeyError if it holds no live value."""
        if self._pop(key, _MISSING) is _MISSING:
            raise KeyError(key)

    @overload
    def pop(self, key: K) -> V: ...
    @overload
    def pop(self, key: K, default: V) -> V: ...
    @overload
    def pop(self, key: K, default: D) -> V | D: ...

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its live value, else ``default`` (KeyError if none)."""
        value = self._pop(key, default)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def popitem(self) -> tuple[K, V]:
        """Remove and return the live ``(key, value)`` pair stored longest ago.

        KeyError if the cache holds no live entry.
        """
        callbacks: list[_Callback] = []
        with self._lock:
            now = self._clock()
            for entry in self._data.values():
                if not entry.expire or entry.expire > now:
                    break
            else:
                raise KeyError("popitem(): cache is empty")
            self._discard(entry)
            self._exit(entry, callbacks)
        self._run(callbacks)
        return cast(K, entry.key), cast(V, entry.value)

    def clear(self) -> None:
        """Remove every entry (``on_exit`` fires for each) and all frequencies."""
        callbacks: list[_Callback] = []
        with self._lock:
            self._metrics.hits += len(self._reads)
            self._reads = []
            self._policy.clear()
            self._ttl.clear()
            for entry in self._store.clear():
                self._exit(entry, callbacks)
        self._run(callbacks)

    def close(self) -> None:
        """Stop the background sweeper, if any.  The cache stays usable."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.stop()

    # -- loading -------------------------------------------------------------

    def get_or_load(self, key: K, loader: Callable[[], V],
                    cost: float | Callable[[V], float] | None = None,
                    ttl: float | None = None) -> V:
        """Return the cached value, or call ``loader()`` once and cache it.

        Concurrent callers for the same key (threads or greenlets) wait for
        a single loader call and share its result; if it raises, they all
        get the exception and nothing is cached.  ``cost`` may be a number
        or a function of the loaded value.
        """
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return cast(V, value)
        return self._load(key, loader, cost, ttl)

    async def aget_or_load(self, key: K, loader: Callable[[], Awaitable[V]],
                           cost: float | Callable[[V], float] | None = None,
                           ttl: float | None = None) -> V:
        """``get_or_load`` for an async loader: ``await cache.aget_or_load(k, fetch)``.

        Concurrent tasks of one event loop asking for the same key await a
        single ``loader()`` call, run as its own task: cancelling one waiter
        leaves the call running for the others (and its result is cached).
        If it raises, every waiter gets the exception and nothing is cached.
        """
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return cast(V, value)
        return await self._aload(key, loader, cost, ttl)

    def _load(self, key: K, loader: Callable[[], V],
              cost: float | Callable[[V], float] | None, ttl: float | None) -> V:
        """The single-flight part of ``get_or_load``, after its lookup missed."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                entry = self._data.get(key)
                if entry is not None and (not entry.expire or entry.expire > self._clock()):
                    return cast(V, entry.value)
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return cast(V, flight.value)
        try:
            value = loader()
            self.set(key, value, cost(value) if callable(cost) else cost, ttl)
            flight.value = value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return value

    async def _aload(self, key: K, loader: Callable[[], Awaitable[V]],
                     cost: float | Callable[[V], float] | None, ttl: float | None) -> V:
        """The single-flight part of ``aget_or_load``, after its lookup missed."""
        # Imported on first use: asyncio (and the ssl it loads) would otherwise be imported by
        # every user, before gevent's monkey-patching in some of them.
        import asyncio

        loop = asyncio.get_running_loop()
        # Tasks belong to one loop: callers on another loop's thread start their own.
        flight = (loop, key)
        task = self._tasks.get(flight)
        if task is None or task.done():
            value = self._peek(key)
            if value is not _MISSING:
                return cast(V, value)
            task = loop.create_task(self._fill(key, loader, cost, ttl))
            self._tasks[flight] = task
            task.add_done_callback(lambda done: self._landed(flight, done))
        # shield: a cancelled waiter stops waiting; the shared call goes on.
        return cast(V, await asyncio.shield(task))

    async def _fill(self, key: K, loader: Callable[[], Awaitable[V]],
                    cost: float | Callable[[V], float] | None, ttl: float | None) -> V:
        value = await loader()
        self.set(key, value, cost(value) if callable(cost) else cost, ttl)
        return value

    def _landed(self, flight: tuple[asyncio.AbstractEventLoop, Any],
                task: asyncio.Task[Any]) -> None:
        if self._tasks.get(flight) is task:
            del self._tasks[flight]
        if not task.cancelled():
            task.exception()  # marks it retrieved: waiters that stayed already have it

    # -- capacity ------------------------------------------------------------

    @property
    def max_cost(self) -> int:
        """The budget; assigning a smaller one evicts until it fits."""
        return self._policy.max_cost

    @max_cost.setter
    def max_cost(self, max_cost: int) -> None:
        max_cost = self._check_max_cost(max_cost)
        callbacks: list[_Callback] = []
        with self._lock:
            if self._reads:
                self._drain(callbacks)
            self._evicted(self._policy.resize(max_cost), callbacks)
        self._run(callbacks)

    @property
    def cost_used(self) -> float:
        """Summed cost of the entries held, never above ``max_cost``."""
        with self._lock:
            return self._store.cost_used

    @property
    def metrics(self) -> Metrics:
        """Counters of hits, misses, admissions, evictions..., current as of this call.

        Hits are tallied when the read buffer is applied (when it fills, on
        each write, and on each access to this property), which keeps a hit's
        cost down; counters read later from the returned object may lag by the
        hits made since.
        """
        callbacks: list[_Callback] = []
        with self._lock:
            if self._reads:
                self._drain(callbacks)
        if callbacks:
            self._run(callbacks)
        return self._metrics

    # -- internals (called with the lock held unless they take it) ------------

    def _find(self, key: object) -> Entry | None:
        """The entry stored under ``key``, live or not; call under the lock."""
        try:
            return self._data.get(key)
        except TypeError:
            raise _unhashable(key) from None

    def _peek(self, key: object) -> Any:
        """The live value of ``key`` or _MISSING, without counting a use."""
        with self._lock:
            entry = self._find(key)
            if entry is not None and (not entry.expire or entry.expire > self._clock()):
                return entry.value
        return _MISSING

    def _pop(self, key: object, default: Any) -> Any:
        """Remove ``key``; return its live value, or ``default``."""
        callbacks: list[_Callback] = []
        with self._lock:
            entry = self._find(key)
            if entry is None:
                return default
            if not entry.expire or entry.expire > self._clock():
                self._discard(entry)
                self._exit(entry, callbacks)
                default = entry.value
            else:
                self._expire(entry, callbacks)
        self._run(callbacks)
        return default

    def _snapshot(self) -> list[tuple[K, V]]:
        """The live ``(key, value)`` pairs, read at one instant."""
        with self._lock:
            now = self._clock()
            return [(cast(K, entry.key), cast(V, entry.value)) for entry in self._data.values()
                    if not entry.expire or entry.expire > now]

    def _drain(self, callbacks: list[_Callback]) -> None:
        """Apply buffered reads to the policy and reclaim some expired cost."""
        reads, self._reads = self._reads, []
        self._metrics.hits += len(reads)
        self._policy.record_hits(reads)
        if self._ttl.count:
            self._reclaim(self._ttl.pop_expired(self._clock(), _SWEEP_PER_OP), callbacks)

    def _discard(self, entry: Entry) -> None:
        self._policy.remove(entry)
        self._ttl.remove(entry)
        self._store.remove(entry)

    def _expire(self, entry: Entry, callbacks: list[_Callback]) -> None:
        self._discard(entry)
        self._counted_expiry(entry, callbacks)

    def _counted_expiry(self, entry: Entry, callbacks: list[_Callback]) -> None:
        self._metrics.keys_expired += 1
        if self._on_evict is not None:
            callbacks.append((self._on_evict, (entry.key, entry.value, entry.cost)))
        self._exit(entry, callbacks)

    def _reclaim(self, expired: list[Entry], callbacks: list[_Callback]) -> None:
        """Drop entries the expiry buckets already unfiled."""
        for entry in expired:
            self._policy.remove(entry)
            self._store.remove(entry)
            self._counted_expiry(entry, callbacks)

    def _evicted(self, out: list[Entry], callbacks: list[_Callback],
                 rejected: Entry | None = None) -> None:
        """Drop the entries the policy pushed out; ``rejected`` is a refused newcomer."""
        metrics = self._metrics
        remove = self._store.remove
        for entry in out:
            if entry.expire:
                self._ttl.remove(entry)
            remove(entry)
            if entry is rejected:
                continue
            metrics.keys_evicted += 1
            metrics.cost_evicted += entry.cost
            if self._on_evict is not None:
                callbacks.append((self._on_evict, (entry.key, entry.value, entry.cost)))
            if self._on_exit is not None:
                callbacks.append((self._on_exit, (entry.key, entry.value)))

    def _exit(self, entry: Entry, callbacks: list[_Callback]) -> None:
        if self._on_exit is not None:
            callbacks.append((self._on_exit, (entry.key, entry.value)))

    def _reject(self, key: K, value: V, cost: float, callbacks: list[_Callback]) -> None:
        if self._on_reject is not None:
            callbacks.append((self._on_reject, (key, value, cost)))
        if self._on_exit is not None:
            callbacks.append((self._on_exit, (key, value)))

    def _sweep_expired(self) -> None:
        """Reclaim every expired entry now (used by the background sweeper)."""
        callbacks: list[_Callback] = []
        with self._lock:
            self._reclaim(self._ttl.pop_expired(self._clock(), None, exact=True), callbacks)
        self._run(callbacks)

    @staticmethod
    def _run(callbacks: list[_Callback]) -> None:
        """Call collected callbacks outside the lock; re-raise the first error."""
        error: BaseException | None = None
        for fn, args in callbacks:
            try:
                fn(*args)
            except Exception as exc:  # every callback runs even if one fails
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_cost={self.max_cost}, "
                f"cost_used={self._store.cost_used}, len={len(self._data)})")


class _ValuesView(ValuesView[V]):
    _mapping: Cache[Any, V]

    def __iter__(self) -> Iterator[V]:
        return iter([value for _, value in self._mapping._snapshot()])


class _ItemsView(ItemsView[K, V]):
    _mapping: Cache[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return iter(self._mapping._snapshot())

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        held = self._mapping._peek(key)
        return held is not _MISSING and (held is value or held == value)
