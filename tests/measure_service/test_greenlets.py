from __future__ import annotations

import gevent
import gevent.event

from measure_service import greenlets, logs, prometheus_metrics


def test_a_spawned_greenlet_sees_the_spawners_trace_id() -> None:
    token = logs.set_trace_id("req-1")
    try:
        seen = greenlets.spawn(logs.current_trace_id).get(timeout=1)
    finally:
        logs.reset_trace_id(token)
    assert seen == "req-1"


def test_a_plain_greenlet_does_not_see_it() -> None:
    token = logs.set_trace_id("req-1")
    try:
        seen = gevent.spawn(logs.current_trace_id).get(timeout=1)
    finally:
        logs.reset_trace_id(token)
    assert seen is None


def test_spawned_greenlets_are_counted_while_alive_and_uncounted_after() -> None:
    gauge = prometheus_metrics.BACKGROUND_GREENLETS
    before = gauge._value.get()
    release = gevent.event.Event()
    greenlet = greenlets.spawn(release.wait)
    assert gauge._value.get() == before + 1
    release.set()
    greenlet.join()
    gevent.sleep(0)  # links run on the hub's next turn
    assert gauge._value.get() == before
