"""The micro-batcher: items gathered per group, flushed by window or size, bounded sends.

The release rule's timing is stated with a fake clock: the batcher's waits end when the test
moves the clock past their deadline (or when the batcher's own wake-up comes), never by sleeping.
"""

from __future__ import annotations

import math

import gevent
import pytest
from gevent.event import Event

from measure_service.batcher import INITIAL_LATENCY_S, Batcher

LONG_WINDOW_S = 60.0  # a window no test waits out: batches leave by size or by yielding
WINDOW_S = 0.002
NOBODY_WAITS = 0.0


class Recorder:
    """A send function that records batches and can be held to keep slots busy."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.gate = Event()
        self.gate.set()
        self.sent = Event()

    def __call__(self, group: str, items: list[int]) -> None:
        self.batches.append((group, items))
        self.sent.set()
        self.gate.wait()


class FakeTime:
    """A clock that moves only when told to, and a wait whose timeout follows that clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self._alarms: list[tuple[float, Event]] = []

    def clock(self) -> float:
        return self.now

    def wait(self, event: Event, timeout: float) -> None:
        alarm = Event()
        self._alarms.append((self.now + timeout, alarm))
        gevent.wait([event, alarm], count=1)

    def advance(self, seconds: float) -> None:
        gevent.idle()  # greenlets started before now see the old time first
        self.now += seconds
        due = [alarm for deadline, alarm in self._alarms if deadline <= self.now + 1e-12]
        self._alarms = [(d, a) for d, a in self._alarms if d > self.now + 1e-12]
        for alarm in due:
            alarm.set()
        gevent.idle()


def timed_batcher(
    recorder: Recorder, time: FakeTime, *, answer_within_s: float = NOBODY_WAITS,
    max_items: int = 100, concurrency: int = 4,
) -> Batcher[str, int]:
    return Batcher(
        recorder, window_s=WINDOW_S, max_items=max_items, concurrency=concurrency,
        answer_within_s=answer_within_s, clock=time.clock, wait=time.wait,
    )


def one_batch_in_flight(batcher: Batcher[str, int], recorder: Recorder, time: FakeTime) -> None:
    """Send one batch of group "g" and keep it out (the recorder's gate stays shut)."""
    recorder.gate.clear()
    sent = len(recorder.batches)
    batcher.add("g", 0)
    time.advance(WINDOW_S)
    assert recorder.batches[sent:] == [("g", [0])]


def measure_latency(
    batcher: Batcher[str, int], recorder: Recorder, time: FakeTime, seconds: float
) -> None:
    """Let one send of group "m" take ``seconds`` on the fake clock."""
    recorder.gate.clear()
    sent = len(recorder.batches)
    batcher.add("m", -1)
    time.advance(WINDOW_S)
    assert len(recorder.batches) == sent + 1
    time.advance(seconds)
    recorder.gate.set()
    gevent.idle()


def wait_for_batches(recorder: Recorder, count: int) -> None:
    with gevent.Timeout(5):
        while len(recorder.batches) < count:
            gevent.sleep(0)
            recorder.sent.clear()
            if len(recorder.batches) < count:
                recorder.sent.wait()


def test_items_added_within_the_window_leave_as_one_batch() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int] = Batcher(recorder, window_s=0.0, max_items=10, concurrency=1)
    for item in range(3):
        batcher.add("g", item)
    wait_for_batches(recorder, 1)
    assert recorder.batches == [("g", [0, 1, 2])]


def test_a_full_batch_leaves_without_waiting_for_the_window() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int] = Batcher(
        recorder, window_s=LONG_WINDOW_S, max_items=2, concurrency=1
    )
    batcher.add("g", 1)
    batcher.add("g", 2)
    wait_for_batches(recorder, 1)
    assert recorder.batches == [("g", [1, 2])]


def test_a_batch_never_holds_more_than_max_items() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int] = Batcher(recorder, window_s=0.0, max_items=2, concurrency=4)
    for item in range(5):
        batcher.add("g", item)
    wait_for_batches(recorder, 3)
    assert [items for _, items in recorder.batches] == [[0, 1], [2, 3], [4]]


def test_groups_are_batched_separately() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int] = Batcher(recorder, window_s=0.0, max_items=10, concurrency=2)
    batcher.add("a", 1)
    batcher.add("b", 2)
    batcher.add("a", 3)
    wait_for_batches(recorder, 2)
    assert sorted(recorder.batches) == [("a", [1, 3]), ("b", [2])]


def test_items_arriving_while_every_slot_is_busy_pile_into_the_next_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher: Batcher[str, int] = Batcher(recorder, window_s=0.0, max_items=100, concurrency=1)
    batcher.add("g", 0)
    wait_for_batches(recorder, 1)
    for item in range(1, 4):
        batcher.add("g", item)
        gevent.sleep(0)
    assert len(recorder.batches) == 1  # the only slot is still busy
    recorder.gate.set()
    wait_for_batches(recorder, 2)
    assert recorder.batches[1] == ("g", [1, 2, 3])


def test_waiting_counts_items_not_yet_sent() -> None:
    recorder = Recorder()
    batcher: Batcher[str, int] = Batcher(
        recorder, window_s=LONG_WINDOW_S, max_items=10, concurrency=1
    )
    batcher.add("g", 1)
    batcher.add("h", 2)
    assert batcher.waiting() == 2
    batcher.close()


def test_a_closed_batcher_refuses_items() -> None:
    batcher: Batcher[str, int] = Batcher(Recorder(), window_s=0.0, max_items=1, concurrency=1)
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.add("g", 1)


def test_a_lone_item_leaves_when_the_window_ends() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    batcher.add("g", 1)
    time.advance(WINDOW_S / 2)
    assert recorder.batches == []
    time.advance(WINDOW_S / 2)
    assert recorder.batches == [("g", [1])]


def test_behind_a_batch_in_flight_the_next_is_held_until_that_one_comes_back() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1)
    time.advance(WINDOW_S * 10)
    batcher.add("g", 2)
    time.advance(WINDOW_S * 10)
    assert len(recorder.batches) == 1  # still held: the window has long passed
    recorder.gate.set()
    gevent.idle()
    assert recorder.batches[1] == ("g", [1, 2])


def test_a_held_batch_leaves_after_one_recent_send_duration() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    measure_latency(batcher, recorder, time, 0.2)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1)
    time.advance(0.19)
    assert len(recorder.batches) == 2
    time.advance(0.01)
    assert recorder.batches[2] == ("g", [1])  # the batch ahead of it is still out


def test_a_full_batch_is_never_held() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, max_items=2)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1)
    batcher.add("g", 2)
    gevent.idle()
    assert recorder.batches[1] == ("g", [1, 2])


def test_a_group_is_not_held_behind_another_group_in_flight() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("h", 1)
    time.advance(WINDOW_S)
    assert recorder.batches[1] == ("h", [1])


def test_nothing_is_held_while_upstream_answers_within_the_callers_wait() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=0.045)
    measure_latency(batcher, recorder, time, 0.02)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1)
    time.advance(WINDOW_S)
    assert recorder.batches[2] == ("g", [1])


def test_batches_are_held_once_upstream_is_too_slow_for_the_callers_wait() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=0.045)
    measure_latency(batcher, recorder, time, 0.1)
    assert batcher.hold_s == pytest.approx(0.1)


def test_callers_waiting_for_every_answer_are_never_held_for() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=math.inf)
    measure_latency(batcher, recorder, time, 5.0)
    assert batcher.hold_s == 0.0


def test_before_any_send_returns_the_latency_is_a_guess_that_the_first_send_replaces() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    assert batcher.latency_s == INITIAL_LATENCY_S
    measure_latency(batcher, recorder, time, 0.3)
    assert batcher.latency_s == pytest.approx(0.3)


def test_the_latency_follows_later_sends_as_a_weighted_average() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    measure_latency(batcher, recorder, time, 0.1)
    measure_latency(batcher, recorder, time, 0.2)
    assert 0.1 < batcher.latency_s < 0.2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"window_s": -1.0}, "window_s"), ({"max_items": 0}, "max_items"),
     ({"concurrency": 0}, "concurrency"), ({"answer_within_s": -1.0}, "answer_within_s"),
     ({"answer_within_s": math.nan}, "answer_within_s")],
)
def test_bad_settings_are_refused_naming_the_argument(kwargs: dict[str, float], name: str) -> None:
    settings = {"window_s": 0.0, "max_items": 1, "concurrency": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        Batcher(Recorder(), **settings)  # type: ignore[arg-type]


def test_a_batch_is_not_held_while_the_fastest_recent_send_would_answer_in_time() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=0.045)
    measure_latency(batcher, recorder, time, 0.02)
    measure_latency(batcher, recorder, time, 0.2)
    assert batcher.latency_s > 0.045 and batcher.hold_s == 0.0


def test_a_batch_nobody_waits_for_is_held_behind_one_in_flight() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=math.inf)
    measure_latency(batcher, recorder, time, 0.1)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1, deadline=time.clock())
    time.advance(WINDOW_S)
    assert len(recorder.batches) == 2


def test_a_caller_who_stopped_waiting_does_not_get_a_batch_held_for_a_caller_still_waiting(
) -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=0.045)
    measure_latency(batcher, recorder, time, 0.02)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1, deadline=time.clock() - 1.0)
    batcher.add("g", 2, deadline=time.clock() + 0.045)
    time.advance(WINDOW_S)
    assert recorder.batches[-1] == ("g", [1, 2])


def test_before_any_send_comes_back_no_batch_is_held_for_waiting_callers() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=0.045)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1)
    time.advance(WINDOW_S)
    assert recorder.batches[-1] == ("g", [1])


def test_an_item_added_at_once_leaves_without_waiting_for_the_window() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time)
    batcher.add("g", 1)
    batcher.add("g", 2, at_once=True)
    gevent.idle()
    assert recorder.batches == [("g", [2, 1])]


def test_an_item_added_at_once_is_not_held_behind_a_batch_in_flight() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, answer_within_s=math.inf)
    measure_latency(batcher, recorder, time, 0.1)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("g", 1, at_once=True)
    gevent.idle()
    assert recorder.batches[-1] == ("g", [1])


def test_a_batch_with_an_item_added_at_once_is_first_in_line_for_a_slot() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, concurrency=1)
    one_batch_in_flight(batcher, recorder, time)
    batcher.add("h", 1, deadline=time.clock() + 1.0)
    time.advance(WINDOW_S)
    batcher.add("k", 2, deadline=time.clock() + 5.0, at_once=True)
    gevent.idle()
    recorder.gate.set()
    wait_for_batches(recorder, 3)
    assert [group for group, _ in recorder.batches[1:]] == ["k", "h"]


def test_an_item_added_at_once_goes_in_the_next_batch_even_behind_a_full_queue() -> None:
    recorder, time = Recorder(), FakeTime()
    batcher = timed_batcher(recorder, time, max_items=2, concurrency=1)
    one_batch_in_flight(batcher, recorder, time)
    for item in (1, 2, 3):
        batcher.add("h", item)
    batcher.add("h", 4, at_once=True)
    recorder.gate.set()
    wait_for_batches(recorder, 2)
    assert recorder.batches[1] == ("h", [4, 1])
