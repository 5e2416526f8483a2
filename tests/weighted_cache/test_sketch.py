from weighted_cache.sketch import FrequencySketch, spread


def test_unseen_key_has_zero_frequency():
    assert FrequencySketch(1024).estimate("never") == 0


def test_first_sighting_is_held_by_the_doorkeeper():
    sketch = FrequencySketch(1024)
    sketch.increment("a")
    assert sketch.estimate("a") == 1
    assert sketch.additions == 1


def test_repeated_sightings_raise_the_estimate():
    sketch = FrequencySketch(1024)
    for _ in range(5):
        sketch.increment("a")
    assert sketch.estimate("a") == 5


def test_counters_saturate_at_fifteen_plus_doorkeeper():
    sketch = FrequencySketch(1 << 16)
    sketch.increment("hot", 100)
    assert sketch.estimate("hot") == 16


def test_batched_increments_match_single_ones():
    one, many = FrequencySketch(4096), FrequencySketch(4096)
    for key in range(50):
        one.increment(key)
        many.increment(key)
        one.increment(key, 3)
    many.increment_many([(key, 3) for key in range(50)])
    assert [one.estimate(k) for k in range(50)] == [many.estimate(k) for k in range(50)]


def test_aging_halves_counters_after_the_sample_size():
    sketch = FrequencySketch(64)
    sketch.increment("a", 9)  # 1 in the doorkeeper, 8 in the counters
    before = sketch.estimate("a")
    for key in range(1000, 1000 + sketch.sample_size):
        sketch.increment(key)
    assert sketch.estimate("a") <= before // 2


def test_aging_clears_the_doorkeeper():
    sketch = FrequencySketch(64)
    sketch.increment("a")
    sketch.age()
    assert sketch.estimate("a") == 0


def test_estimates_never_undercount_without_aging():
    sketch = FrequencySketch(1 << 14)
    for key in range(500):
        sketch.increment(key, key % 7 + 1)
    assert all(sketch.estimate(k) >= min(k % 7 + 1, 16) for k in range(500))


def test_clear_forgets_everything():
    sketch = FrequencySketch(256)
    sketch.increment("a", 4)
    sketch.clear()
    assert sketch.estimate("a") == 0


def test_the_doorkeeper_holds_only_keys_sighted():
    sketch = FrequencySketch(1024)
    sketch.sight("x")
    assert sketch.estimate("x") == 1
    assert sketch.estimate("y") == 0


def test_spread_separates_neighbouring_integers():
    assert len({spread(i) & 1023 for i in range(100)}) > 90


def test_non_positive_width_is_refused():
    import pytest

    with pytest.raises(ValueError, match="num_counters"):
        FrequencySketch(0)


def test_a_first_sight_is_absorbed_by_the_doorkeeper():
    sketch = FrequencySketch(1024)
    assert sketch.sight("a") == 1
    assert sketch.estimate("a") == 1


def test_later_sights_raise_the_counters():
    sketch = FrequencySketch(1024)
    seen = [sketch.sight("a") for _ in range(3)]
    assert seen == [1, 2, 3]
    assert sketch.estimate("a") == 3


def test_ageing_forgets_first_sightings_held_by_the_doorkeeper():
    sketch = FrequencySketch(1024)
    for key in range(100):
        sketch.sight(key)  # first sightings only: the doorkeeper holds them all
    sketch.age()
    assert sketch.additions == 0


def test_ageing_subtracts_the_halves_that_odd_counters_lose():
    sketch = FrequencySketch(1 << 12)
    for key in range(100):
        sketch.increment(key, 4)  # 1 in the doorkeeper, 3 (odd) in the counters
    sketch.age()
    # Each key keeps 1 of its 3 counted sightings; 0 with the doorkeeper cleared.
    assert sketch.additions == 100


def test_ageing_comes_no_sooner_than_the_sample_of_surviving_sightings():
    sketch = FrequencySketch(1 << 10)
    ages = 0
    version = sketch.version
    for key in range(40 * sketch.sample_size):
        sketch.sight(key % 2000)
        sketch.add(())
        if sketch.version != version:
            ages += 1
            version = sketch.version
    # Most sightings are firsts and die with the doorkeeper, so ageing is rare.
    assert ages < 40
