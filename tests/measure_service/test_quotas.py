"""Fair shares per client key: one key's flood never refuses another key's rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from measure_service.quotas import (
    OVER_PENDING_SHARE,
    OVER_REQUESTS_SHARE,
    OVER_ROWS_SHARE,
    TenantQuotas,
)
from tests.conftest import FakeClock


def quotas(clock: FakeClock, *, pending: int = 100, rows: float = 0.0, requests: float = 0.0,
           tenants: int = 2) -> TenantQuotas:
    return TenantQuotas(max_pending_rows=pending, rows_per_s=rows, requests_per_s=requests,
                        tenants=tenants, clock=clock)


def test_a_single_key_may_use_the_whole_pending_bound(clock: FakeClock) -> None:
    shares = quotas(clock, tenants=1)
    assert shares.admit("a", 150) == (100, OVER_PENDING_SHARE)


def test_a_key_alone_keeps_a_share_free_for_another_key(clock: FakeClock) -> None:
    shares = quotas(clock, tenants=3)
    admitted, reason = shares.admit("b", 1000)
    assert admitted == 50 and reason == OVER_PENDING_SHARE


def test_a_flooding_key_never_refuses_another_keys_rows(clock: FakeClock) -> None:
    shares = quotas(clock, tenants=2)
    shares.admit("b", 1000)
    assert shares.admit("a", 10) == (10, None)
    assert shares.admit("b", 1)[0] == 0


def test_finished_fetches_give_their_share_back(clock: FakeClock) -> None:
    shares = quotas(clock, tenants=2)
    admitted, _ = shares.admit("b", 1000)
    shares.finished("b", admitted)
    assert shares.admit("b", 10) == (10, None)


def test_new_rows_per_second_are_shared_between_keys(clock: FakeClock) -> None:
    shares = quotas(clock, pending=10_000, rows=100, tenants=2)
    assert shares.admit("b", 1000) == (50, OVER_ROWS_SHARE)
    assert shares.admit("a", 50) == (50, None)
    clock.advance(2.0)
    assert shares.admit("b", 10) == (10, None)


def test_a_key_over_its_share_of_requests_gets_no_new_rows(clock: FakeClock) -> None:
    shares = quotas(clock, requests=10, tenants=2)
    for _ in range(10):
        shares.charge_request({"b": 5})
    assert shares.admit("b", 1) == (0, OVER_REQUESTS_SHARE)
    assert shares.admit("a", 1) == (1, None)


def test_a_shared_request_is_charged_by_rows(clock: FakeClock) -> None:
    shares = quotas(clock, requests=10, tenants=2)
    for _ in range(8):
        shares.charge_request({"a": 1, "b": 3})
    assert shares.requests.used("a") == pytest.approx(2.0)
    assert shares.requests.used("b") == pytest.approx(6.0)


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 400), st.booleans()),
                max_size=40))
def test_a_key_under_its_guarantee_is_always_admitted_and_the_bound_at_most_doubles(
    steps: list[tuple[str, int, bool]]
) -> None:
    shares = quotas(FakeClock(), pending=100, tenants=4)
    held = dict.fromkeys("abcd", 0)
    for tenant, count, finish in steps:
        if finish and held[tenant]:
            shares.finished(tenant, held[tenant])
            held[tenant] = 0
            continue
        admitted, _ = shares.admit(tenant, count)
        assert admitted >= min(count, max(0, 25 - held[tenant]))
        held[tenant] += admitted
        assert sum(held.values()) <= 200
