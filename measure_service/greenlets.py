"""Background greenlets: each carries its spawner's trace id, and each is counted.

Every background greenlet of the service (batch flushes and the upstream fetches they run) starts
here, so ``measure_background_greenlets`` counts them all: a number that must stay bounded however
slow or absent upstream is.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import gevent

from measure_service import prometheus_metrics


def spawn(func: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """Start ``func`` in a greenlet that sees a copy of the caller's contextvars (its trace id).

    A new greenlet otherwise starts with an empty context, and its log lines would lose the id.
    """
    greenlet = gevent.spawn(contextvars.copy_context().run, func, *args)
    prometheus_metrics.BACKGROUND_GREENLETS.inc()
    greenlet.link(_ended)
    return greenlet


def _ended(_greenlet: gevent.Greenlet) -> None:
    prometheus_metrics.BACKGROUND_GREENLETS.dec()
