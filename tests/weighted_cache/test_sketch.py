from tests.weighted_cache.conftest import see
from weighted_cache.sketch import FrequencySketch


def test_unseen_key_has_zero_frequency():
    assert FrequencySketch(1024).estimate("never") == 0


def test_first_sighting_is_held_by_the_doorkeeper():
    sketch = FrequencySketch(1024)
    see(sketch, "a")
    assert sketch.estimate("a") == 1
    assert sketch.additions == 1


def test_repeated_sightings_raise_the_estimate():
    sketch = FrequencySketch(1024)
    for _ in range(5):
        see(sketch, "a")
    assert sketch.estimate("a") == 5


def test_counters_saturate_at_fifteen_plus_doorkeeper():
    sketch = FrequencySketch(1 << 16)
    see(sketch, "hot", 100)
    assert sketch.estimate("hot") == 16


def test_batched_additions_match_single_increments():
    one, many = FrequencySketch(4096), FrequencySketch(4096)
    for key in range(50):
        see(one, key)
        many.sight(key)
        see(one, key, 3)
    many.add([(key, 3) for key in range(50)])
    assert [one.estimate(k) for k in range(50)] == [many.estimate(k) for k in range(50)]


def test_aging_halves_counters_once_a_batch_finds_the_sample_full():
    sketch = FrequencySketch(64)
    see(sketch, "a", 9)  # 1 in the doorkeeper, 8 in the counters
    before = sketch.estimate("a")
    for key in range(1000, 1000 + sketch.sample_size):
        see(sketch, key, 2)
    assert sketch.estimate("a") <= before // 2


def test_sighting_alone_never_ages_the_sketch():
    sketch = FrequencySketch(64)
    see(sketch, "a", 9)
    before = sketch.estimate("a")
    for key in range(1000, 1000 + 2 * sketch.sample_size):
        sketch.sight(key)
    assert sketch.additions >= sketch.sample_size
    assert sketch.estimate("a") >= before  # not halved; collisions may only add


def test_aging_clears_the_doorkeeper():
    sketch = FrequencySketch(64)
    see(sketch, "a")
    sketch.age()
    assert sketch.estimate("a") == 0


def test_estimates_never_undercount_without_aging():
    sketch = FrequencySketch(1 << 14)
    for key in range(500):
        see(sketch, key, key % 7 + 1)
    assert all(sketch.estimate(k) >= min(k % 7 + 1, 16) for k in range(500))


def test_clear_forgets_everything():
    sketch = FrequencySketch(256)
    see(sketch, "a", 4)
    sketch.clear()
    assert sketch.estimate("a") == 0


def test_the_doorkeeper_holds_only_keys_sighted():
    sketch = FrequencySketch(1024)
    sketch.sight("x")
    assert sketch.estimate("x") == 1
    assert sketch.estimate("y") == 0


def test_neighbouring_integers_do_not_share_counters():
    sketch = FrequencySketch(1024)
    for key in range(100):
        see(sketch, key, 8)
    # A raw integer hash would map key + width onto key's counters in every row.
    assert sum(sketch.estimate(key) for key in range(256, 356)) < 20


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
        see(sketch, key, 4)  # 1 in the doorkeeper, 3 (odd) in the counters
    sketch.age()
    # Each key keeps 1 of its 3 counted sightings, and none in the cleared doorkeeper;
    # without the subtractions the count would be (100 + 300) / 2.
    assert 100 <= sketch.additions < 120


def test_one_hit_wonders_age_the_sketch_no_sooner_than_once_per_sample():
    sketch = FrequencySketch(1 << 10)
    ages = 0
    for key in range(10 * sketch.sample_size):
        sketch.sight(key)
        if sketch.additions >= sketch.sample_size:
            sketch.age()
            ages += 1
    # Each ageing leaves nothing of them behind, so a full sample is needed for the next one.
    assert ages == 10
