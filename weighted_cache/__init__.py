"""weighted_cache: a weighted TinyLFU cache with TTL, metrics and single-flight loading.

>>> from weighted_cache import Cache
>>> cache = Cache(max_cost=100)
>>> cache.set("a", "value", cost=3)
True
>>> cache.get("a")
'value'
"""

from .cache import Cache
from .decorator import cached
from .metrics import Metrics

__all__ = ["Cache", "Metrics", "cached"]
