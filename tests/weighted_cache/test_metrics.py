from weighted_cache import Cache, Metrics


def test_ratio_is_zero_before_any_lookup():
    assert Metrics().ratio == 0.0


def test_ratio_is_hits_over_lookups():
    m = Metrics()
    m.hits, m.misses = 3, 1
    assert m.ratio == 0.75


def test_snapshot_lists_every_counter_and_the_ratio():
    snap = Metrics().snapshot()
    assert set(snap) == {
        "hits", "misses", "ratio", "keys_added", "keys_updated", "keys_evicted",
        "keys_expired", "cost_added", "cost_evicted", "sets_rejected",
    }


def test_reset_zeroes_every_counter():
    m = Metrics()
    m.hits = m.keys_added = 4
    m.reset()
    assert all(v == 0 for v in m.snapshot().values())


def test_cache_counts_hits_and_misses():
    cache: Cache[str, int] = Cache(10)
    cache.set("a", 1)
    cache.get("a")
    cache.get("b")
    assert (cache.metrics.hits, cache.metrics.misses) == (1, 1)


def test_cache_counts_adds_updates_and_cost():
    cache: Cache[str, int] = Cache(10)
    cache.set("a", 1, cost=3)
    cache.set("a", 2, cost=4)
    snap = cache.metrics.snapshot()
    assert (snap["keys_added"], snap["keys_updated"], snap["cost_added"]) == (1, 1, 3)


def test_cache_counts_rejections():
    cache: Cache[str, int] = Cache(10)
    cache.set("big", 1, cost=11)
    assert cache.metrics.sets_rejected == 1


def test_cache_counts_evictions_with_their_cost():
    cache: Cache[int, int] = Cache(3)
    for key in range(3):
        cache.set(key, key)
    cache.set(0, 0, cost=2)  # the update must push one other entry out
    assert (cache.metrics.keys_evicted, cache.metrics.cost_evicted) == (1, 1)


def test_every_hit_is_counted_when_metrics_is_read():
    cache: Cache[int, int] = Cache(1000)
    cache.set(1, 1)
    for _ in range(300):  # more than one read buffer's worth
        cache.get(1)
    assert cache.metrics.hits == 300
