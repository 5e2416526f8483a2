"""The shadows: miniatures of the policy that measure which way a window step pays."""

from __future__ import annotations

from weighted_cache.policy import Policy
from weighted_cache.shadows import Shadows
from weighted_cache.sketch import FrequencySketch
from weighted_cache.store import Entry


def shadows(max_cost: int = 100, low: int = 1, high: int = 40) -> Shadows:
    pair = Shadows()
    pair.age_at = 10 * max_cost
    pair.place(max_cost, low, high)
    for key in range(max_cost):  # fill both with keys seen once
        pair.access(("old", key), 1)
    return pair


def full_policy(max_cost: int = 1000) -> Policy:
    policy = Policy(max_cost, FrequencySketch(10 * max_cost))
    for key in range(max_cost + 1):  # one more than fits: the cache has filled
        policy.add(Entry(key, key, 1, 0.0))
    return policy


def test_the_larger_window_wins_when_keys_come_back_just_past_the_smaller_one() -> None:
    pair = shadows()
    for burst in range(50):
        keys = [(burst, i) for i in range(20)]
        for key in keys + keys:
            pair.access(key, 1)
    assert pair.up > 100
    assert pair.down == 0


def test_the_smaller_window_wins_when_a_hot_set_needs_the_main_space() -> None:
    pair = shadows()
    for rnd in range(50):
        for key in range(80):
            pair.access(("hot", key), 1)
        for key in range(30):
            pair.access(("once", rnd, key), 1)
    assert pair.down > 100
    assert pair.up < pair.down // 10


def test_a_decisive_lean_towards_a_larger_window_grows_it_a_step() -> None:
    policy = full_policy()
    start = policy.window_max
    policy._shadows.up, policy._shadows.down = 60, 10
    policy._climb()
    assert policy.window_max == start + policy._step_cost()


def test_a_decisive_lean_towards_a_smaller_window_shrinks_it_a_step() -> None:
    policy = full_policy()
    policy._adjust_window(500)
    grown = policy.window_max
    policy._shadows.up, policy._shadows.down = 10, 60
    policy._climb()
    assert policy.window_max == grown - policy._step_cost()


def test_a_ghost_near_move_waits_while_the_shadows_lean_against_it() -> None:
    policy = full_policy()
    start = policy.window_max
    policy._window_ghost.gains = [400, 400, 0, 0, 0]  # refused keys came back within a step
    policy._shadows.up, policy._shadows.down = 0, 8
    policy._climb()
    assert policy.window_max == start
