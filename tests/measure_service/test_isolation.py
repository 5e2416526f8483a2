"""The isolator: a batch failed by one row's input is split until that row fails alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from measure_service.isolation import Isolator
from measure_service.upstream import RowResult, UpstreamError

OK = RowResult(1.0, "modeled", None)


class Upstream:
    """Fails any request holding a poisoned position (5xx or 400), or every request if down."""

    def __init__(self, poisoned: Mapping[int, int] | None = None, *, down: bool = False) -> None:
        self.poisoned = dict(poisoned or {})
        self.down = down
        self.requests: list[list[int]] = []
        self.settled: list[bool] = []

    def send(self, positions: Sequence[int], timeout_s: float | None = None) -> dict[int, RowResult]:
        self.requests.append(list(positions))
        statuses = [self.poisoned[p] for p in positions if p in self.poisoned]
        if self.down:
            statuses = [503]
        if statuses:
            status = statuses[0]
            error = UpstreamError(
                "http_5xx" if status >= 500 else "http_4xx", f"upstream answered {status}",
                status=status,
            )
            error.judged = status < 500
            raise error
        return {position: OK for position in positions}

    def settle(self, error: UpstreamError, explained: bool) -> None:
        self.settled.append(explained)


def fetch(upstream: Upstream, owners: Sequence[str]) -> object:
    return Isolator(upstream.settle).fetch(owners, upstream.send)


def test_a_batch_that_succeeds_is_sent_once() -> None:
    upstream = Upstream()
    verdicts = fetch(upstream, ["a"] * 5)
    assert upstream.requests == [[0, 1, 2, 3, 4]]
    assert set(verdicts.answers) == {0, 1, 2, 3, 4}  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [500, 400])
def test_the_poisoned_row_gets_an_error_and_every_other_row_its_answer(status: int) -> None:
    upstream = Upstream({3: status})
    verdicts = fetch(upstream, ["a"] * 8)
    assert verdicts.culprits == {3}  # type: ignore[attr-defined]
    assert verdicts.answers[3].error is not None  # type: ignore[attr-defined]
    assert all(verdicts.answers[p] == OK for p in range(8) if p != 3)  # type: ignore[attr-defined]
    assert not verdicts.failures  # type: ignore[attr-defined]


def test_rows_of_other_clients_are_retried_apart_from_the_poisoning_client() -> None:
    upstream = Upstream({0: 500})
    fetch(upstream, ["b", "a", "a", "b"])
    assert [0, 3] in upstream.requests and [1, 2] in upstream.requests


def test_a_poisoned_batch_does_not_count_towards_the_breaker() -> None:
    upstream = Upstream({2: 500})
    fetch(upstream, ["a", "b", "c"])
    assert upstream.settled and not any(explained is False for explained in upstream.settled)


def test_a_lone_row_failing_once_then_answered_gets_its_answer() -> None:
    upstream = Upstream({0: 500})
    sends = iter([True, False])
    real = upstream.send

    def flaky(positions: Sequence[int], timeout_s: float | None = None) -> dict[int, RowResult]:
        upstream.down = next(sends)
        return real(positions, timeout_s)

    upstream.poisoned = {}
    verdicts = Isolator(upstream.settle).fetch(["a"], flaky)
    assert verdicts.answers == {0: OK} and upstream.settled == [False]


def test_when_upstream_is_down_a_batch_costs_three_requests_and_counts_once() -> None:
    upstream = Upstream(down=True)
    verdicts = fetch(upstream, ["a"] * 100)
    assert len(upstream.requests) == 3
    assert upstream.settled.count(False) == 1
    assert len(verdicts.failures) == 100 and not verdicts.culprits  # type: ignore[attr-defined]


def test_a_lone_row_failing_with_5xx_while_nothing_answers_is_a_failure_not_a_culprit() -> None:
    upstream = Upstream({0: 500})
    verdicts = fetch(upstream, ["a"])
    assert 0 in verdicts.failures and not verdicts.culprits  # type: ignore[attr-defined]
    assert upstream.settled.count(False) == 1 and len(upstream.requests) == 2


def test_a_lone_row_refused_with_400_is_a_culprit() -> None:
    upstream = Upstream({0: 400})
    verdicts = fetch(upstream, ["a"])
    assert verdicts.culprits == {0}  # type: ignore[attr-defined]


def test_many_poisoned_rows_spend_the_budget_and_fail_only_their_own_clients_rows() -> None:
    poisoned = {p: 500 for p in range(0, 200, 2)}
    upstream = Upstream(poisoned)
    owners = ["b"] * 200 + ["a"] * 10
    verdicts = fetch(upstream, owners)
    assert all(verdicts.answers[p] == OK for p in range(200, 210))  # type: ignore[attr-defined]
    assert len(upstream.requests) <= 1 + 2 + 4 * 8 + 1
    failed = verdicts.failures  # type: ignore[attr-defined]
    assert failed and all(owners[p] == "b" for p in failed)


@given(
    size=st.integers(2, 64),
    poisoned=st.sets(st.integers(0, 63), max_size=3),
    status=st.sampled_from([500, 400]),
)
def test_one_clients_bad_rows_never_cost_another_client_an_answer(
    size: int, poisoned: set[int], status: int
) -> None:
    owners = ["a"] * (size // 2) + ["b"] * (size - size // 2)
    poisoned = {p for p in poisoned if p < size and owners[p] == "b"}
    upstream = Upstream({p: status for p in poisoned})
    verdicts = fetch(upstream, owners)
    answers, failures = verdicts.answers, verdicts.failures  # type: ignore[attr-defined]
    assert set(answers) | set(failures) == set(range(size))
    assert not set(answers) & set(failures)
    assert verdicts.culprits <= poisoned  # type: ignore[attr-defined]
    assert all(answers.get(p) == OK for p in range(size) if owners[p] == "a")
    assert all(answers.get(p) == OK for p in range(size) if p not in poisoned)


@given(size=st.integers(1, 64), poisoned=st.integers(0, 63), status=st.sampled_from([500, 400]))
def test_with_one_bad_row_every_other_row_is_answered(
    size: int, poisoned: int, status: int
) -> None:
    upstream = Upstream({poisoned: status})
    verdicts = fetch(upstream, ["a"] * size)
    answers = verdicts.answers  # type: ignore[attr-defined]
    assert all(answers.get(p) == OK for p in range(size) if p != poisoned)


def test_the_client_whose_rows_failed_while_others_were_answered_is_a_suspect() -> None:
    upstream = Upstream({0: 500, 1: 500})
    verdicts = fetch(upstream, ["b", "b", "a"])
    assert verdicts.suspects == {"b"}  # type: ignore[attr-defined]


def test_a_batch_can_go_on_splitting_with_another_sender() -> None:
    upstream = Upstream({1: 400})
    isolation = Isolator(upstream.settle).begin(["a", "a", "a"], upstream.send)
    assert not isolation.done and len(upstream.requests) == 1
    isolation.go_on(upstream.send)
    assert isolation.done and isolation.verdicts.culprits == {1}
