"""The micro-batcher: items gathered per group, flushed by window or size, bounded sends."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from measure_service.batcher import Batcher

LONG_WINDOW_S = 60.0  # a window no test waits out: batches leave by size or by yielding


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


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"window_s": -1.0}, "window_s"), ({"max_items": 0}, "max_items"),
     ({"concurrency": 0}, "concurrency")],
)
def test_bad_settings_are_refused_naming_the_argument(kwargs: dict[str, float], name: str) -> None:
    settings = {"window_s": 0.0, "max_items": 1, "concurrency": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        Batcher(Recorder(), **settings)  # type: ignore[arg-type]
