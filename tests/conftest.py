"""Shared test set-up: the fakes unit tests share (:class:`FakeClock`, :class:`TopRandom`), and
integration fixtures that run the simulator and gunicorn for real.

Integration fixtures (any test under tests/ can use them; mark such tests ``integration``) are
built on ``devtools.harness``, the one process harness of tests, benchmarks and the demo:

- ``processes``: a :class:`Processes` for one test; everything it started is stopped after it.
  ``processes.simulator(*flags, latency_ms=5, jitter_ms=0, token=None)`` returns a
  :class:`Simulator` (``url``, ``stats()``, ``reset()``, ``control(**changes)``);
  ``processes.service(simulator, env={...}, workers=1)`` starts gunicorn with
  ``gunicorn.conf.py`` against it, waits for ``/readyz`` and returns a :class:`Service`
  (``url``, ``post(rows, ...)``, ``post_body(bytes, ...)``, ``statuses(rows)``, ``get(path)``,
  ``metrics()``, ``log_lines()``, ``log_path``). ``env`` adds to or overrides :data:`SERVICE_ENV`.
- ``module_processes``: the same, shared by one test module (start once, reuse).
- ``simulator`` / ``service``: a module-wide pair with defaults (5 ms simulator, 1 worker,
  ``WAIT_FOR_MISSING=true`` with a 250 ms window); use fresh inventory ids per test, the cache
  is shared. A test that changes the simulator with ``control()`` calls ``reset()`` after.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
# devtools/ is not installed, and bench/ holds scripts that import each other by plain name.
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from devtools import probes  # noqa: E402
from devtools.harness import (  # noqa: E402
    REDIS_SERVER,
    Processes,
    RedisServer,
    Service,
    Simulator,
    StartError,
)

__all__ = [
    "ROOT", "FakeClock", "Processes", "RedisServer", "Service", "Simulator", "StartError",
    "TopRandom", "eventually", "require_redis_server",
]

API_KEY = "test-key"
UPSTREAM_TOKEN = "test-upstream-token"
# Defaults of every service started by the fixtures; tests override what they exercise.
SERVICE_ENV = {
    "API_KEYS": API_KEY,
    "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
    "WAIT_FOR_MISSING": "true",
    # Generous, so that "fetched" does not depend on how loaded the machine is; the 45 ms
    # figure itself is measured by bench/, not by tests.
    "WAIT_WINDOW_MS": "250",
    "LOG_LEVEL": "INFO",
    "ACCESS_LOG": "on",
    "UPSTREAM_TIMEOUT_MS": "2000",
    "UPSTREAM_RETRIES": "0",
    "WEB_CONCURRENCY": "1",
}
T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout_s: float = 10.0) -> T:
    """:func:`devtools.probes.eventually`, failing the test when ``check`` never holds."""
    try:
        return probes.eventually(check, timeout_s)
    except TimeoutError as exc:
        pytest.fail(str(exc))


# --- fakes for unit tests ------------------------------------------------------------------------

class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TopRandom(random.Random):
    """Always draws the upper end of a range."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- processes ---------------------------------------------------------------------------------

@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes started for one test, stopped after it."""
    with Processes(tmp_path, service_env=SERVICE_ENV) as started:
        yield started


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes shared by one test module, stopped after its last test."""
    with Processes(tmp_path_factory.mktemp("processes"), service_env=SERVICE_ENV) as started:
        yield started


@pytest.fixture(scope="module")
def simulator(module_processes: Processes) -> Simulator:
    """A fast simulator (5 ms, no jitter) for the module."""
    return module_processes.simulator()


@pytest.fixture(scope="module")
def service(module_processes: Processes, simulator: Simulator) -> Service:
    """One gevent worker in front of ``simulator``, waiting up to 250 ms for misses."""
    return module_processes.service(simulator)


# --- a real redis-server -----------------------------------------------------------------------


def require_redis_server() -> None:
    """Skip when redis-server is missing, except in CI (CI=true), where that is a failure."""
    if not Path(REDIS_SERVER).exists():
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the module (flush it between tests that need it empty)."""
    require_redis_server()
    with Processes(tmp_path_factory.mktemp("redis")) as started:
        yield started.redis()


@pytest.fixture(scope="module")
def module_redis(module_processes: Processes) -> RedisServer:
    """A redis-server among the module's processes, for services started there to share."""
    require_redis_server()
    return module_processes.redis()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``cluster`` tests unless CI=true or RUN_CLUSTER_TESTS=1: they take half a minute."""
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("RUN_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="Redis Cluster test: set RUN_CLUSTER_TESTS=1 (CI runs it)")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)
