"""``@cached``: memoise a function in a weighted_cache ``Cache``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, TypeVar

from .cache import Cache

P = ParamSpec("P")
R = TypeVar("R")


def cached(
    cache: Cache[Any, Any],
    key: Callable[..., Hashable] | None = None,
    cost: float | Callable[[Any], float] | None = None,
    ttl: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Cache a function's results through ``cache.get_or_load``.

    ``key(*args, **kwargs)`` builds the cache key; by default it is the
    function's qualified name with its arguments, so several functions can
    share one cache.  ``cost`` is a number or a function of the result.
    Concurrent calls with the same key run the function once.
    """
    if key is not None and not callable(key):
        raise TypeError("key must be callable")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if key is not None:
                k = key(*args, **kwargs)
            else:
                k = (name, args, tuple(sorted(kwargs.items(), key=_first)))
            result: R = cache.get_or_load(k, lambda: fn(*args, **kwargs), cost, ttl)
            return result

        return wrapper

    return decorate


def _first(item: tuple[str, Any]) -> str:
    return item[0]
