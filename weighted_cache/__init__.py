"""weighted_cache: a weighted TinyLFU cache with TTL, metrics and single-flight loading.

>>> from weighted_cache import Cache
>>> cache = Cache(max_cost=100)
>>> cache.set("a", "value", cost=3)
True
>>> cache["a"]
'value'
"""

from .cache import Cache
from .decorator import CachedFunction, CacheInfo, cached, cachedmethod
from .metrics import Metrics

__version__ = "0.2.0"

__all__ = [
    "Cache",
    "CacheInfo",
    "CachedFunction",
    "Metrics",
    "__version__",
    "cached",
    "cachedmethod",
]
