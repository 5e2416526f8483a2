"""The single-flight table: one fetch per key, shared by every waiter."""

from __future__ import annotations

import gevent
import pytest

from measure_service.singleflight import SingleFlight


def test_a_joiner_shares_the_leaders_result() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    leader = table.start("k")
    assert table.join("k") is leader


def test_a_key_without_a_fetch_has_nothing_to_join() -> None:
    assert SingleFlight[str, int]().join("k") is None


def test_starting_a_second_fetch_for_a_key_in_flight_is_refused() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    table.start("k")
    with pytest.raises(KeyError):
        table.start("k")


def test_resolving_wakes_every_waiter_with_the_value() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    result = table.start("k")
    waiters = [gevent.spawn(result.get) for _ in range(3)]
    table.resolve("k", 42)
    assert [w.get(timeout=1) for w in waiters] == [42, 42, 42]


def test_failing_raises_the_error_in_every_waiter() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    result = table.start("k")
    table.fail("k", RuntimeError("down"))
    with pytest.raises(RuntimeError, match="down"):
        result.get(timeout=1)


def test_a_finished_key_leaves_the_table_so_the_next_miss_starts_afresh() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    table.start("k")
    table.resolve("k", 1)
    assert "k" not in table
    assert len(table) == 0
    assert table.join("k") is None


def test_in_flight_lists_the_keys_being_fetched() -> None:
    table: SingleFlight[str, int] = SingleFlight()
    table.start("a")
    table.start("b")
    assert sorted(table.in_flight()) == ["a", "b"]
