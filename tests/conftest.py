"""Shared test set-up, and integration fixtures that run the simulator and gunicorn for real.

Integration fixtures (any test under tests/ can use them; mark such tests ``integration``):

- ``processes``: a :class:`Processes` for one test; everything it started is stopped after it.
  ``processes.simulator(latency_ms=5, jitter_ms=0, token=None, *extra_flags)`` starts
  ``python -m measure_service.simulator`` on a free loopback port and returns a
  :class:`Simulator` (``url``, ``stats()``, ``reset()``, ``control(**changes)``).
  ``processes.service(simulator, env={...}, workers=1)`` starts gunicorn with
  ``gunicorn.conf.py`` (gevent workers) on a free loopback port against that simulator, waits
  for ``/readyz`` and returns a :class:`Service` (``url``, ``post(rows, ...)``, ``get(path)``,
  ``log_lines()``, ``log_path``). ``env`` adds to or overrides :data:`SERVICE_ENV`.
- ``module_processes``: the same, shared by one test module (start once, reuse).
- ``simulator`` / ``service``: a module-wide pair with defaults (5 ms simulator, 1 worker,
  ``WAIT_FOR_MISSING=true`` with a 250 ms window); use fresh inventory ids per test, the cache
  is shared. A test that changes the simulator with ``control()`` calls ``reset()`` after.

Every process writes stdout and stderr to a file under pytest's tmp dir, which a failing test
can read (``Service.log_lines()``); processes are always terminated, then killed if need be.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
# Lets the suite run from a checkout that was not pip-installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
START_TIMEOUT_S = 20.0
# A response object still referenced keeps its connection open, and on SIGTERM gunicorn waits
# out the keep-alive of idle connections: closing each one keeps teardown fast.
_CLOSE = {"Connection": "close"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Simulator:
    """A running simulator process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stats(self) -> dict[str, Any]:
        """The simulator's ``/_stats`` document."""
        document: dict[str, Any] = requests.get(f"{self.url}/_stats", timeout=5).json()
        return document

    def reset(self) -> None:
        """Clear the counters and restore the command-line behaviour."""
        requests.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    def control(self, **changes: Any) -> None:
        """Change behaviour at runtime (latency_ms, jitter_ms, mode, ...)."""
        requests.post(f"{self.url}/_control", json=changes, timeout=5).raise_for_status()


@dataclass
class Service:
    """A running gunicorn serving measure_service."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = API_KEY

    def worker_pids(self) -> set[int]:
        """The pids of gunicorn's workers: the master's children, read from /proc."""
        text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return {int(pid) for pid in text.split()}

    def post(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        """POST ``{"rows": rows}`` to /v2/measure with the API key."""
        sent = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        sent.update(_CLOSE)
        sent.update(headers or {})
        return requests.post(
            f"{self.url}/v2/measure{query}", json={"rows": list(rows)}, headers=sent,
            timeout=timeout,
        )

    def get(self, path: str) -> requests.Response:
        """GET a path of the service."""
        return requests.get(f"{self.url}{path}", headers=_CLOSE, timeout=10)

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON line the service has written so far (stdout and stderr)."""
        lines = []
        for text in self.log_path.read_text(errors="replace").splitlines():
            try:
                document = json.loads(text)
            except ValueError:
                continue
            if isinstance(document, dict):
                lines.append(document)
        return lines


T = TypeVar("T")


def bench_module(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` (bench/ holds scripts, not a package), once per process."""
    module_name = f"bench_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def eventually(check: Callable[[], T | None], timeout_s: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail after timeout_s.

    For effects that land a moment after a response: log lines, metrics files, background fetches.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    pytest.fail(f"{check} never became true within {timeout_s} s")


class Processes:
    """Starts simulators and services, and stops every one of them on :meth:`close`."""

    def __init__(self, tmp_dir: Path) -> None:
        """Write process logs under ``tmp_dir``."""
        self._tmp_dir = tmp_dir
        self._running: list[subprocess.Popen[bytes]] = []

    def simulator(
        self, *flags: str, latency_ms: float = 5, jitter_ms: float = 0, token: str | None = None
    ) -> Simulator:
        """Start the simulator with these settings; ``flags`` are extra CLI arguments."""
        log_path = self._log_path("simulator")
        argv = [
            sys.executable, "-m", "measure_service.simulator", "--port", str(free_port()),
            "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms), *flags,
        ]
        if token is not None:
            argv += ["--token", token]
        process = self._spawn(argv, os.environ.copy(), log_path)
        port = argv[argv.index("--port") + 1]
        simulator = Simulator(f"http://127.0.0.1:{port}", process, log_path)
        _wait_for(f"{simulator.url}/_stats", process, log_path)
        return simulator

    def service(
        self,
        simulator: Simulator | None,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        command: Sequence[str] | None = None,
    ) -> Service:
        """Start gunicorn (gevent workers) against ``simulator``; wait until /readyz is 200.

        ``command`` replaces the usual gunicorn command line (run from the project root).
        """
        port = free_port()
        full_env = {**os.environ, **SERVICE_ENV, "WEB_CONCURRENCY": str(workers)}
        full_env.update(
            HOST="127.0.0.1",
            PORT=str(port),
            PYTHONPATH=str(ROOT),
            SCOPE3_API_URL=simulator.url if simulator else "http://127.0.0.1:9",
            PROMETHEUS_MULTIPROC_DIR=str(self._tmp_dir / f"metrics-{port}"),
        )
        full_env.update(env or {})
        log_path = self._log_path("service")
        argv = list(command) if command is not None else [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "measure_service.wsgi:app",
        ]
        process = self._spawn(argv, full_env, log_path)
        keys = full_env.get("API_KEYS", "")
        service = Service(
            f"http://127.0.0.1:{port}", process, log_path, keys.split(",")[0] or None
        )
        _wait_for(f"{service.url}/readyz", process, log_path)
        return service

    def close(self) -> None:
        """SIGTERM every process, then SIGKILL those still alive after 5 s."""
        for process in self._running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._running:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._running.clear()

    def _log_path(self, name: str) -> Path:
        return self._tmp_dir / f"{name}-{len(self._running)}.log"

    def _spawn(
        self, argv: list[str], env: Mapping[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        self._running.append(process)
        return process


def _wait_for(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} not ready within {START_TIMEOUT_S} s:\n{log_path.read_text()}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes started for one test, stopped after it."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes shared by one test module, stopped after its last test."""
    started = Processes(tmp_path_factory.mktemp("processes"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def simulator(module_processes: Processes) -> Simulator:
    """A fast simulator (5 ms, no jitter) for the module."""
    return module_processes.simulator()


@pytest.fixture(scope="module")
def service(module_processes: Processes, simulator: Simulator) -> Service:
    """One gevent worker in front of ``simulator``, waiting up to 250 ms for misses."""
    return module_processes.service(simulator)


# --- a real redis-server -----------------------------------------------------------------------

@dataclass
class RedisServer:
    """A ``redis-server`` on a loopback port, persistence off; it can be killed, hung, restarted.

    ``url`` stays the same across :meth:`kill` / :meth:`start`, like a server that comes back.
    """

    port: int
    log_path: Path
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    faults: int = 0  # kills and pauses so far
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        argv = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
            "--maxmemory-policy", "allkeys-lfu", *self.extra,
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.02)
        pytest.fail(f"redis-server did not start:\n{self.log_path.read_text()}")

    def client(self) -> Any:
        """A plain redis-py client (for the test's own checks)."""
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2
        )

    def kill(self) -> None:
        """SIGKILL the server: every connection drops, the data is gone."""
        self.faults += 1
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) but never answers."""
        assert self.process is not None
        self.faults += 1
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop for good (resumed first if paused)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _find_redis_server() -> str | None:
    import shutil

    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


REDIS_SERVER = _find_redis_server() or "redis-server"


def require_redis_server() -> None:
    """Skip when redis-server is missing, except in CI (CI=true), where that is a failure."""
    if _find_redis_server() is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def start_redis(tmp_dir: Path, *extra: str, password: str | None = None) -> RedisServer:
    """Start a redis-server on a free loopback port; the caller stops it."""
    require_redis_server()
    server = RedisServer(
        free_port(), tmp_dir / f"redis-{time.monotonic_ns()}.log", extra, password=password
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the module (flush it between tests that need it empty)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
