"""The synthetic generators: deterministic, and shaped as their docstrings say."""

from __future__ import annotations

from collections import Counter

import synthetic


def test_a_seed_gives_the_same_keys_on_every_call() -> None:
    assert synthetic.recency_bursts(500, seed=3) == synthetic.recency_bursts(500, seed=3)
    assert synthetic.one_hit_wonders(50, 500, seed=3) == synthetic.one_hit_wonders(50, 500, seed=3)
    assert synthetic.shifting_zipf(50, 500, seed=3) != synthetic.shifting_zipf(50, 500, seed=4)


def test_recency_bursts_request_half_the_keys_twice_within_the_gap() -> None:
    keys = synthetic.recency_bursts(n_keys=4000, min_gap=16, max_gap=63)
    counts = Counter(keys)
    assert set(counts.values()) == {1, 2}
    assert 0.45 < sum(c == 2 for c in counts.values()) / len(counts) < 0.55
    first: dict[int, int] = {}
    for position, key in enumerate(keys):
        if key in first:
            assert 16 <= position - first[key] <= 80  # a taken slot pushes it a little later
        first[key] = position


def test_a_loop_repeats_its_keys_in_order() -> None:
    assert synthetic.loop(n_keys=3, repeats=2) == [0, 1, 2, 0, 1, 2]


def test_scans_bring_keys_never_seen_again() -> None:
    keys = synthetic.scans_in_zipf(n_keys=100, n_accesses=2000, scan_every=500, scan_length=100)
    scanned = [key for key in keys if key >= 100]
    assert len(scanned) == len(set(scanned)) > 0


def test_shifting_zipf_changes_its_most_popular_key_each_phase() -> None:
    keys = synthetic.shifting_zipf(n_keys=300, n_accesses=8000, phases=4)
    tops = {Counter(keys[i * 2000:(i + 1) * 2000]).most_common(1)[0][0] for i in range(4)}
    assert len(tops) == 4


def test_one_hit_wonders_make_about_their_share_of_requests() -> None:
    keys = synthetic.one_hit_wonders(n_keys=200, n_accesses=10_000, share=0.5)
    once = sum(1 for key in keys if key >= 200)
    assert 0.45 < once / len(keys) < 0.55
    assert len({key for key in keys if key >= 200}) == once
