"""The isolator: a batch failed by one row's input is split until that row fails alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gevent
import gevent.event
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from measure_service.row_isolation import DEADLINE_FACTOR, CutShort, Isolator
from measure_service.upstream import RowResult, UpstreamError

OK = RowResult(1.0, "modeled", None)


class Upstream:
    """Fails any request holding a poisoned position (5xx or 400), or every request if down."""

    def __init__(self, poisoned: Mapping[int, int] | None = None, *, down: bool = False) -> None:
        self.poisoned = dict(poisoned or {})
        self.down = down
        self.requests: list[list[int]] = []
        self.settled: list[bool] = []

    def send(
        self, positions: Sequence[int], timeout_s: float | None = None
    ) -> dict[int, RowResult]:
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


@settings(deadline=None)  # greenlets per split: a loaded host takes longer
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


@settings(deadline=None)  # greenlets per split: a loaded host takes longer
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


# --- every other way one row can spoil a batch ----------------------------------------------------

KINDS = ["timeout", "connection_error", "malformed", "slow", "short", "identity", "row_error"]


class Spoiling(Upstream):
    """Upstream whose poisoned positions spoil their request in one of ``KINDS``'s ways.

    ``slow`` answers right but takes 10 s of the fake clock: a send with a shorter read timeout
    times out at it instead.
    """

    def __init__(self, poisoned: Mapping[int, str], clock: list[float]) -> None:
        super().__init__()
        self.kinds = dict(poisoned)
        self.clock = clock
        self.timeouts: list[float | None] = []

    def send(
        self, positions: Sequence[int], timeout_s: float | None = None
    ) -> dict[int, RowResult]:
        self.requests.append(list(positions))
        self.timeouts.append(timeout_s)
        self.clock[0] += 0.05
        kinds = [self.kinds[p] for p in positions if p in self.kinds]
        if not kinds:
            return {position: OK for position in positions}
        kind = kinds[0]
        first = next(p for p in positions if p in self.kinds)
        if kind in ("timeout", "connection_error", "malformed") or (
            kind == "slow" and timeout_s is not None
        ):
            if kind in ("timeout", "slow"):
                gevent.sleep(0)  # a send waiting for its timeout lets the sends beside it run
            self.clock[0] += timeout_s or 5.0 if kind in ("timeout", "slow") else 0.0
            error = UpstreamError("timeout" if kind == "slow" else kind, kind)  # type: ignore[arg-type]
            error.judged = False
            raise error
        answers = {position: OK for position in positions}
        if kind == "slow":
            self.clock[0] += 10.0
        elif kind == "short":
            answers = {p: OK for p in positions if p < first}
        elif kind == "identity":
            del answers[first]  # its answer came under another row's identifier: both dropped
            other = next((p for p in positions if p != first), None)
            answers.pop(other, None)  # type: ignore[arg-type]
        elif kind == "row_error":
            answers = {p: RowResult(None, None, "the batch failed") for p in positions}
        return answers


def spoil(kind: str, owners: Sequence[str], poisoned: set[int]) -> tuple[Spoiling, object]:
    clock = [0.0]
    upstream = Spoiling({}, clock)
    isolator = Isolator(upstream.settle, clock=lambda: clock[0])
    isolator.fetch(["w"] * 2, upstream.send)  # upstream is seen answering, and how fast
    upstream.requests.clear()
    upstream.timeouts.clear()
    upstream.kinds = {p: kind for p in poisoned}
    return upstream, isolator.fetch(owners, upstream.send)


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_spoiling_its_batch_in_any_way_costs_the_other_client_none_of_its_answers(
    kind: str,
) -> None:
    owners = ["a", "b", "a", "a", "b"]
    upstream, verdicts = spoil(kind, owners, {1})
    answers = verdicts.answers  # type: ignore[attr-defined]
    assert all(answers.get(p) == OK for p in (0, 2, 3, 4))
    assert 1 not in answers or answers[1] != OK or kind == "slow"
    assert "b" in verdicts.suspects or kind == "row_error"  # type: ignore[attr-defined]
    assert not any(explained is False for explained in upstream.settled)


@pytest.mark.parametrize("kind", KINDS)
def test_a_spoilt_batch_costs_a_bounded_number_of_requests(kind: str) -> None:
    owners = ["a"] * 32 + ["b"] * 32
    upstream, _ = spoil(kind, owners, {40})
    assert len(upstream.requests) <= 1 + 2 + 4 * 6 + 1


def test_a_send_of_several_clients_rows_gets_a_short_read_timeout_and_one_clients_the_full(
) -> None:
    upstream, _ = spoil("slow", ["a", "b"], {1})
    assert upstream.timeouts[0] is not None and upstream.timeouts[0] < 5.0
    assert upstream.timeouts[1:] == [None, None]


def test_a_slow_clients_rows_get_their_late_answer_and_it_is_a_suspect() -> None:
    _, verdicts = spoil("slow", ["a", "b"], {1})
    assert verdicts.answers == {0: OK, 1: OK}  # type: ignore[attr-defined]
    assert verdicts.suspects == {"b"} and not verdicts.culprits  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["timeout", "connection_error", "malformed"])
def test_a_row_failing_alone_while_upstream_answers_others_is_cached_as_its_error(
    kind: str,
) -> None:
    _, verdicts = spoil(kind, ["a", "b"], {1})
    assert verdicts.culprits == {1}  # type: ignore[attr-defined]
    assert verdicts.answers[1].error  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["short", "identity"])
def test_a_row_left_out_of_the_answer_even_alone_fails_and_is_never_cached(kind: str) -> None:
    _, verdicts = spoil(kind, ["a", "b"], {1})
    assert 1 in verdicts.failures and 1 not in verdicts.answers  # type: ignore[attr-defined]


def test_a_row_error_beside_answered_rows_of_the_same_client_is_that_rows_answer() -> None:
    clock = [0.0]
    upstream = Upstream()

    def send(positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
        upstream.requests.append(list(positions))
        return {p: RowResult(None, None, "unknown") if p == 1 else OK for p in positions}

    verdicts = Isolator(upstream.settle, clock=lambda: clock[0]).fetch(["b"] * 3, send)
    assert len(upstream.requests) == 1 and verdicts.answers[1].error == "unknown"


def test_every_row_of_one_clients_send_failing_is_asked_again_in_halves() -> None:
    upstream, verdicts = spoil("row_error", ["b"] * 4, {0})
    assert upstream.requests[:3] == [[0, 1, 2, 3], [0, 1], [2, 3]]
    assert verdicts.answers[0].error  # type: ignore[attr-defined]
    assert all(verdicts.answers[p] == OK for p in (1, 2, 3))  # type: ignore[attr-defined]


def test_row_errors_in_an_answer_to_several_clients_rows_are_asked_again_by_client() -> None:
    upstream, verdicts = spoil("row_error", ["a", "b"], {1})
    assert upstream.requests == [[0, 1], [0], [1]]
    assert verdicts.answers[0] == OK and verdicts.answers[1].error  # type: ignore[attr-defined]


def test_the_short_read_timeout_follows_the_usual_answer_time() -> None:
    clock = [0.0]
    isolator = Isolator(lambda error, explained: None, clock=lambda: clock[0])
    before = isolator.deadline_s()

    def send(positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
        clock[0] += 0.5
        return {p: OK for p in positions}

    for _ in range(20):
        isolator.fetch(["a"], send)
    assert isolator.deadline_s() > before
    assert isolator.deadline_s() == pytest.approx(DEADLINE_FACTOR * 0.5)


@settings(deadline=None)  # greenlets per split: a loaded host takes longer
@given(
    size=st.integers(2, 40),
    poisoned=st.sets(st.integers(0, 39), max_size=3),
    kind=st.sampled_from(KINDS),
)
def test_whatever_way_rows_spoil_a_batch_no_clean_row_gets_a_wrong_answer(
    size: int, poisoned: set[int], kind: str
) -> None:
    owners = ["a"] * (size // 2) + ["b"] * (size - size // 2)
    poisoned = {p for p in poisoned if p < size and owners[p] == "b"}
    upstream, verdicts = spoil(kind, owners, poisoned)
    answers = verdicts.answers  # type: ignore[attr-defined]
    assert all(answers.get(p) == OK for p in range(size) if owners[p] == "a")
    assert all(answers.get(p) in (None, OK) for p in range(size) if p not in poisoned)
    assert len(upstream.requests) <= 1 + 2 + 4 * 6


# --- cutting short, handing answers over early, judging on evidence -------------------------------

class Hanging:
    """Upstream on which any send holding a hanging position waits until released (or its read
    timeout ends, then fails as a timeout); other sends are answered at once."""

    def __init__(self, hanging: set[int]) -> None:
        self.hanging = hanging
        self.release = gevent.event.Event()
        self.requests: list[list[int]] = []
        self.settled: list[bool] = []

    def send(self, positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
        self.requests.append(list(positions))
        if self.hanging & set(positions) and not self.release.wait(timeout_s or 5.0):
            error = UpstreamError("timeout", "upstream timed out")
            error.judged = False
            raise error
        return {position: OK for position in positions}

    def settle(self, error: UpstreamError, explained: bool) -> None:
        self.settled.append(explained)


def test_the_first_trustworthy_answer_of_a_row_is_kept_and_the_row_not_sent_again() -> None:
    upstream = Hanging({1})
    isolator = Isolator(upstream.settle)
    isolation = isolator.begin(["a", "b"], upstream.send)  # times out: b's row hangs
    first_answer = RowResult(2.0, "modeled", None)
    isolation.verdicts.answers[0] = first_answer
    upstream.release.set()
    isolation.go_on(upstream.send)
    assert isolation.verdicts.answers[0] is first_answer
    assert [0] not in upstream.requests[1:]


def test_a_send_cut_short_is_sent_again_whole_and_not_split() -> None:
    sent: list[list[int]] = []

    def send(positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
        sent.append(list(positions))
        if len(sent) == 1:
            raise CutShort()
        return {position: OK for position in positions}

    settled: list[bool] = []
    verdicts = Isolator(lambda error, explained: settled.append(explained)).fetch(
        ["b"] * 3, send
    )
    assert sent == [[0, 1, 2], [0, 1, 2]]
    assert set(verdicts.answers) == {0, 1, 2} and not settled


def test_rows_answered_by_a_split_are_handed_over_before_the_batch_is_judged() -> None:
    clock = [0.0]
    upstream = Spoiling({}, clock)
    isolator = Isolator(upstream.settle, clock=lambda: clock[0])
    isolator.fetch(["w"] * 2, upstream.send)
    upstream.kinds = {1: "timeout"}
    moments: list[tuple[dict[int, RowResult], bool]] = []

    def on_answers(answers: Mapping[int, RowResult]) -> None:
        moments.append((dict(answers), isolation.done))

    isolation = isolator.begin(["a", "b", "a"], upstream.send, on_answers)
    isolation.go_on(upstream.send)
    assert moments and moments[0] == ({0: OK, 2: OK}, False)
    assert isolation.delivered == {0, 2}


def test_a_lone_rows_instant_failure_is_its_own_when_another_send_is_answered_soon_after(
) -> None:
    def reset(positions: Sequence[int], timeout_s: float | None) -> dict[int, RowResult]:
        error = UpstreamError("connection_error", "reset")
        error.judged = False
        raise error

    isolator = Isolator(lambda error, explained: None,
                        wait=lambda event, timeout: isolator.fetch(["c"], lambda p, t: {0: OK}))
    isolator.fetch(["c"], lambda p, t: {0: OK})  # upstream was answering just before
    verdicts = isolator.fetch(["b"], reset)
    assert verdicts.culprits == {0} and verdicts.answers[0].error



def test_only_another_owners_answer_counts_as_answered_by_others() -> None:
    isolator = Isolator(lambda error, explained: None)
    isolator.fetch(["a"], lambda p, t: {0: OK})
    assert not isolator.answered_others_since(0.0, {"a"})
    assert isolator.answered_others_since(0.0, {"b"})


def test_a_send_failing_after_a_whole_deadline_while_upstream_answers_no_one_is_counted_at_once(
) -> None:
    now = [0.0]
    upstream = Upstream(down=True)
    real = upstream.send

    def slow_down(positions: Sequence[int], timeout_s: float | None = None) -> dict[int, RowResult]:
        now[0] += 10.0  # far past any deadline: upstream took its whole time to fail
        return real(positions, timeout_s)

    verdicts = Isolator(upstream.settle, clock=lambda: now[0]).fetch(["a"] * 8, slow_down)
    assert upstream.requests == [list(range(8))]  # not split: its parts would wait as long
    assert upstream.settled == [False]
    assert len(verdicts.failures) == 8 and not verdicts.culprits  # type: ignore[attr-defined]


def test_a_send_timing_out_before_the_deadline_while_upstream_answers_no_one_counts_at_once(
) -> None:
    # Upstream's read timeout may be shorter than the deadline, which follows the usual
    # answer time: a timeout still means upstream had the whole time it was given.
    now = [0.0]
    settled: list[bool] = []
    requests: list[list[int]] = []
    isolator = Isolator(lambda error, explained: settled.append(explained),
                        clock=lambda: now[0])

    def time_out(positions: Sequence[int], timeout_s: float | None = None) -> dict[int, RowResult]:
        requests.append(list(positions))
        now[0] += isolator.deadline_s() / 2
        error = UpstreamError("timeout", "upstream timed out")
        error.judged = False
        raise error

    verdicts = isolator.fetch(["a"] * 8, time_out)
    assert requests == [list(range(8))]
    assert settled == [False]
    assert len(verdicts.failures) == 8
