"""The cache, driven by random operations, against a simple model of what it may return."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from weighted_cache import Cache

KEYS = st.integers(min_value=0, max_value=15)


class CacheMachine(RuleBasedStateMachine):
    """The model remembers the last value written per key and when it expires.

    The cache may forget anything (eviction, admission), but whatever it
    returns must be the latest value written and must not have expired.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cache: Cache[int, int] = Cache(20, clock=lambda: self.now)
        self.model: dict[int, tuple[int, float | None]] = {}
        self.lookups = 0
        self.removed_by_caller = 0
        self.counter = 0

    def check_value(self, key: int, value: int | None) -> None:
        if value is None:
            return
        assert key in self.model, f"{key} returned {value} but was never stored"
        stored, expire = self.model[key]
        assert value == stored
        assert expire is None or self.now < expire, "expired value returned"

    @rule(key=KEYS, cost=st.integers(min_value=0, max_value=24),
          ttl=st.none() | st.integers(min_value=1, max_value=5))
    def set(self, key: int, cost: int, ttl: int | None) -> None:
        self.counter += 1
        value = self.counter
        was_live = key in self.cache
        stored = self.cache.set(key, value, cost=cost, ttl=ttl)
        if stored:
            self.model[key] = (value, None if ttl is None else self.now + ttl)
            self.lookups += 1
            assert self.cache.get(key) == value, "a successful set must be readable"
        else:
            self.model.pop(key, None)
            if was_live and cost > self.cache.max_cost:
                self.removed_by_caller += 1

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        self.lookups += 1
        self.check_value(key, self.cache.get(key))

    @rule(keys=st.lists(KEYS, max_size=6))
    def get_many(self, keys: list[int]) -> None:
        self.lookups += len(keys)
        for key, value in zip(keys, self.cache.get_many(keys), strict=True):
            self.check_value(key, value)

    @rule(key=KEYS)
    def get_or_load(self, key: int) -> None:
        self.lookups += 1
        self.counter += 1
        fresh = self.counter
        value = self.cache.get_or_load(key, lambda: fresh)
        if value == fresh:
            if key in self.cache:
                self.model[key] = (fresh, None)
        else:
            self.check_value(key, value)

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        if self.cache.delete(key):
            self.removed_by_caller += 1
        self.model.pop(key, None)

    @rule(key=KEYS)
    def setitem(self, key: int) -> None:
        self.counter += 1
        self.cache[key] = self.counter  # cost 1 always fits: admission may still refuse it
        if key in self.cache:
            self.model[key] = (self.counter, None)
        else:
            self.model.pop(key, None)

    @rule(key=KEYS)
    def pop(self, key: int) -> None:
        value = self.cache.pop(key, None)
        if value is not None:
            self.removed_by_caller += 1
            self.check_value(key, value)
        self.model.pop(key, None)

    @rule()
    def iterate(self) -> None:
        pairs = list(self.cache.items())
        for key, value in pairs:
            self.check_value(key, value)
        assert sorted(k for k, _ in pairs) == sorted(set(self.cache))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    @rule(max_cost=st.integers(min_value=1, max_value=30))
    def resize(self, max_cost: int) -> None:
        self.cache.max_cost = max_cost

    @precondition(lambda self: self.counter % 7 == 0)
    @rule()
    def clear(self) -> None:
        self.removed_by_caller += len(self.cache._data)
        self.cache.clear()
        self.model.clear()

    @invariant()
    def cost_never_exceeds_budget(self) -> None:
        assert self.cache.cost_used <= self.cache.max_cost

    @invariant()
    def cost_used_is_the_sum_of_held_costs(self) -> None:
        assert self.cache.cost_used == sum(e.cost for e in self.cache._data.values())

    @invariant()
    def held_values_are_the_latest_written(self) -> None:
        for key in range(16):
            if key in self.cache:
                entry = self.cache._data[key]
                self.check_value(key, entry.value)

    @invariant()
    def lookups_are_all_counted(self) -> None:
        m = self.cache.metrics
        assert m.hits + m.misses == self.lookups

    @invariant()
    def len_matches_admissions_minus_departures(self) -> None:
        m = self.cache.metrics
        held = m.keys_added - m.keys_evicted - m.keys_expired - self.removed_by_caller
        assert held == len(self.cache._data)

    @rule()
    def len_counts_live_keys(self) -> None:
        # A rule, not an invariant: len() reclaims expired entries, which
        # would hide expiry bugs from the get rule if it ran after each step.
        live = sum(key in self.cache for key in range(16))
        assert len(self.cache) == live


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60,
                                          deadline=None)
TestCache = CacheMachine.TestCase
