"""``@cached`` and ``@cachedmethod``: memoise functions in a weighted_cache ``Cache``."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, cast, overload

from .cache import Cache

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_MISSING: Any = object()


class CacheInfo(NamedTuple):
    """What ``cache_info()`` reports, in functools' field names.

    ``hits`` and ``misses`` count this function's calls; ``maxsize`` is the
    cache's ``max_cost`` and ``currsize`` its ``cost_used`` (shared by every
    function using the cache).
    """

    hits: int
    misses: int
    maxsize: int
    currsize: float


class CachedFunction(Protocol[P, R_co]):
    """A function wrapped by ``@cached``."""

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...
    @property
    def cache(self) -> Cache[Any, Any]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...

    # Wrappers are plain functions, so a decorated method binds ``self`` as usual.
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> CachedFunction[P, R_co]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Callable[..., R_co]: ...


def cached(
    cache: Cache[Any, Any],
    key: Callable[..., Hashable] | None = None,
    cost: float | Callable[[Any], float] | None = None,
    ttl: float | None = None,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
    """Cache a function's results in ``cache``, one load per key at a time.

    ``key(*args, **kwargs)`` builds the cache key; by default it is the
    function's qualified name with its arguments, so several functions can
    share one cache.  ``cost`` is a number or a function of the result.
    Concurrent calls with the same key run the function once.  On an
    ``async def`` function the awaited result is cached, and concurrent
    tasks share one call (see ``Cache.aget_or_load``).

    The wrapper has ``cache_info()``, ``cache_clear()`` (empties the whole
    cache and this function's counts), ``cache`` and ``__wrapped__``.
    """
    _check_key(key)

    def decorate(fn: Callable[P, R]) -> CachedFunction[P, R]:
        make_key = key if key is not None else _default_key(fn, skip=0)
        return _wrap(fn, lambda args: cache, make_key, cost, ttl, cache)

    return decorate


def cachedmethod(
    cache: Callable[[Any], Cache[Any, Any]],
    key: Callable[..., Hashable] | None = None,
    cost: float | Callable[[Any], float] | None = None,
    ttl: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Cache a method's results in a cache that ``cache(self)`` returns.

    ``key`` gets the arguments after ``self``; by default the key is the
    method's qualified name with those arguments, so ``self`` need not be
    hashable and the cache does not keep instances alive.  ``async def``
    methods work as with ``cached``.

    >>> class Prices:
    ...     def __init__(self) -> None:
    ...         self.cache: Cache[Any, float] = Cache(max_cost=1000)
    ...     @cachedmethod(lambda self: self.cache)
    ...     def quote(self, item: str) -> float:
    ...         return 1.5
    """
    _check_key(key)
    if not callable(cache):
        raise TypeError("cache must be a callable returning the instance's Cache")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if key is None:
            make_key = _default_key(fn, skip=1)
        else:
            method_key = key

            def make_key(*args: Any, **kwargs: Any) -> Hashable:
                return method_key(*args[1:], **kwargs)

        return _wrap(fn, lambda args: cache(args[0]), make_key, cost, ttl, None)

    return decorate


def _wrap(
    fn: Callable[P, R],
    cache_for: Callable[[tuple[Any, ...]], Cache[Any, Any]],
    make_key: Callable[..., Hashable],
    cost: float | Callable[[Any], float] | None,
    ttl: float | None,
    shared: Cache[Any, Any] | None,
) -> CachedFunction[P, R]:
    counts = _Counts()

    def look(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Cache[Any, Any], Hashable, Any]:
        """The call's cache, key and cached value (``_MISSING`` if none), counted once."""
        cache = cache_for(args)
        k = make_key(*args, **kwargs)
        value = cache.get(k, _MISSING)
        counts.add(hit=value is not _MISSING)
        return cache, k, value

    wrapper: Any
    if inspect.iscoroutinefunction(fn):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache, k, value = look(args, kwargs)
            if value is not _MISSING:
                return value
            # _aload, not aget_or_load: one lookup per call keeps the miss count exact.
            return await cache._aload(k, lambda: fn(*args, **kwargs), cost, ttl)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache, k, value = look(args, kwargs)
            if value is not _MISSING:
                return value
            return cache._load(k, lambda: fn(*args, **kwargs), cost, ttl)

    functools.update_wrapper(wrapper, fn)
    if shared is not None:
        wrapper.cache = shared
        wrapper.cache_info = lambda: CacheInfo(
            counts.hits, counts.misses, shared.max_cost, shared.cost_used
        )

        def cache_clear() -> None:
            shared.clear()
            counts.reset()

        wrapper.cache_clear = cache_clear
    return cast(CachedFunction[P, R], wrapper)


class _Counts:
    """Per-function hit and miss counts; the lock keeps concurrent increments exact."""

    __slots__ = ("hits", "lock", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()

    def add(self, hit: bool) -> None:
        with self.lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def reset(self) -> None:
        with self.lock:
            self.hits = self.misses = 0


def _default_key(fn: Callable[..., Any], skip: int) -> Callable[..., Hashable]:
    """The function's qualified name, its positional arguments from ``skip``, its keywords."""
    name = f"{fn.__module__}.{fn.__qualname__}"

    def make_key(*args: Any, **kwargs: Any) -> Hashable:
        if skip:
            args = args[skip:]
        if not kwargs:
            return (name, args)
        return (name, args, tuple(sorted(kwargs.items())))

    return make_key


def _check_key(key: object) -> None:
    if key is not None and not callable(key):
        raise TypeError("key must be callable")
