from tests.weighted_cache.conftest import see
from weighted_cache.policy import Policy
from weighted_cache.sketch import FrequencySketch
from weighted_cache.store import REMOVED, Entry


def make(max_cost: int = 100) -> Policy:
    return Policy(max_cost, FrequencySketch(10 * max_cost))


def in_probation(policy: Policy, entry: Entry) -> bool:
    return policy._segments[entry.where] is policy.probation


def fill(policy: Policy, keys, cost: int = 1) -> list[Entry]:
    entries = []
    for key in keys:
        entry = Entry(key, key, cost, 0.0)
        assert policy.add(entry) == []
        entries.append(entry)
    return entries


def test_new_entries_start_in_the_window():
    policy = make()
    entry = Entry("a", 1, 1, 0.0)
    policy.add(entry)
    assert entry in list(policy.window)


def test_window_overflow_moves_entries_to_probation_while_there_is_room():
    policy = make()
    entries = fill(policy, range(10))
    assert in_probation(policy, entries[0])
    assert policy.total_cost == 10


def test_a_read_promotes_a_probation_entry_to_protected():
    policy = make()
    entries = fill(policy, range(10))
    policy.record_hits([entries[0]])
    assert policy._segments[entries[0].where] is policy.protected


def test_total_cost_never_exceeds_the_budget():
    policy = make(50)
    for key in range(500):
        policy.add(Entry(key, key, key % 7 + 1, 0.0))
        assert policy.total_cost <= 50


def test_an_unpopular_candidate_is_rejected_when_full():
    policy = make(10)
    entries = fill(policy, range(10))
    policy.record_hits(entries * 3)
    newcomer = Entry("new", 0, 1, 0.0)
    policy.add(newcomer)  # enters the one-entry window, pushing out entry 9 as candidate
    out = policy.add(Entry("next", 0, 1, 0.0))  # pushes the newcomer out of the window
    assert newcomer in out and newcomer.where == REMOVED


def test_a_popular_candidate_displaces_a_cold_victim():
    policy = make(10)
    fill(policy, range(10))
    see(policy.sketch, "hot", 10)
    hot = Entry("hot", 0, 1, 0.0)
    out = policy.add(hot)
    assert hot not in out and hot.where != REMOVED
    assert len(out) == 1


def test_a_costly_candidate_must_beat_the_sum_of_its_victims():
    policy = make(10)
    entries = fill(policy, range(10))
    policy.record_hits(entries * 2)  # each resident now has frequency 3
    see(policy.sketch, "big", 8)
    big = Entry("big", 0, 5, 0.0)  # needs five victims, worth 15 together
    assert big in policy.add(big)


def test_a_costly_candidate_worth_more_than_its_victims_is_admitted():
    policy = make(10)
    fill(policy, range(10))
    see(policy.sketch, "big", 14)
    big = Entry("big", 0, 3, 0.0)
    out = policy.add(big)
    assert big.where != REMOVED
    assert sum(e.cost for e in out) >= 3


def test_on_equal_frequency_the_costlier_entry_leaves_first():
    policy = make(10)
    small = fill(policy, ["s1", "s2"], cost=1)
    large = fill(policy, ["l1"], cost=4)
    fill(policy, ["s3", "s4"], cost=1)
    victims = policy._sample_victims(2, None)
    assert victims == large
    assert not any(e in victims for e in small)


def test_an_update_never_evicts_the_updated_entry():
    policy = make(10)
    entries = fill(policy, range(10))
    target = entries[0]
    target.cost = 6
    out = policy.update(target, 1)
    assert target not in out
    assert policy.total_cost <= 10


def test_removed_entries_leave_their_segment():
    policy = make()
    entries = fill(policy, range(5))
    policy.remove(entries[2])
    assert entries[2].where == REMOVED
    assert policy.total_cost == 4


def test_shrinking_the_budget_evicts_until_it_fits():
    policy = make(20)
    fill(policy, range(20))
    out = policy.resize(5)
    assert len(out) == 15
    assert policy.total_cost <= 5


def test_buffered_hits_count_towards_frequency():
    policy = make()
    entries = fill(policy, range(3))
    before = policy.frequency(entries[1])
    policy.record_hits([entries[1]] * 4)
    assert policy.frequency(entries[1]) == before + 4


def test_hits_on_removed_entries_are_ignored():
    policy = make()
    entries = fill(policy, range(3))
    policy.remove(entries[0])
    policy.record_hits([entries[0]])
    assert entries[0].where == REMOVED
    assert policy.total_cost == 2


def test_the_climber_takes_no_sample_before_the_cache_first_fills():
    policy = make(1000)
    start = policy.window_max
    fill(policy, range(900))
    policy.record_hits([])  # would end a sample if one were running
    assert policy._sample_period > 10**9
    assert policy.window_max == start


def test_refused_candidates_that_come_back_soon_grow_the_window():
    policy = make(1000)
    fill(policy, range(1000))
    start = policy.window_max
    # Every key is requested twice, a burst of new keys apart: too far for a tiny window to keep it,
    # and a first sighting never wins admission against the residents.
    for burst in range(200):
        keys = [10_000 + burst * 30 + i for i in range(30)]
        for key in keys + keys:
            entry = Entry(key, key, 1, 0.0)
            policy.add(entry)
    assert policy.window_max > start + 20


def test_main_victims_that_come_back_shrink_the_window():
    policy = make(1000)
    fill(policy, range(1000))
    policy._adjust_window(500)
    grown = policy.window_max
    policy._main_ghost.depth = policy._window_ghost.depth = 1000
    for key in range(50):
        policy._main_ghost.clock += 1
        policy._main_ghost.add(("gone", key))
    for key in range(50):
        policy._main_ghost.returned(("gone", key))
    policy._climb()
    assert policy.window_max < grown


def test_the_window_never_shrinks_below_its_floor():
    policy = make(1000)
    fill(policy, range(1000))
    policy._main_ghost.depth = 1000
    for _ in range(20):
        for key in range(100):
            policy._main_ghost.clock += 1
            policy._main_ghost.add(key)
            policy._main_ghost.returned(key)
        policy._climb()
    assert policy.window_max == 10


def test_replays_are_deterministic():
    def run() -> list[object]:
        policy = make(30)
        kept = []
        for i in range(2000):
            key = (i * 7919) % 97
            out = policy.add(Entry(key, key, 1 + key % 3, 0.0))
            kept.append(tuple(sorted(str(e.key) for e in out)))
        return kept

    assert run() == run()


def test_varied_costs_widen_the_starting_window_once_full():
    policy = make(1000)
    for key in range(400):
        policy.add(Entry(key, key, 1 + key % 5, 0.0))
    assert policy.window_max >= 200


def test_unit_costs_keep_the_one_percent_window_once_full():
    policy = make(1000)
    for key in range(1200):
        policy.add(Entry(key, key, 1, 0.0))
    assert policy.window_max == 10


def test_a_protected_entry_read_again_gets_a_second_chance_before_demotion():
    policy = make(10)
    entries = fill(policy, range(10))
    policy.record_hits(entries[:8])  # protected is now full (8 of 10)
    policy.record_hits([entries[0]])  # the oldest protected entry is read again
    policy.record_hits([entries[8]])  # one more promotion forces a demotion
    assert not in_probation(policy, entries[0])
    assert in_probation(policy, entries[1])


def test_the_sketch_sees_a_new_entry_when_it_leaves_the_window():
    policy = make(100)  # a window of one entry
    entries = fill(policy, range(3))
    assert policy.sketch.estimate(entries[0].key) == 1
    assert policy.sketch.estimate(entries[2].key) == 0  # still in the window
