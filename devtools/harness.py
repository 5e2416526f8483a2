"""Start and stop the simulator and gunicorn on free loopback ports: tests, benchmarks, demo.

The whole API is one context manager, :class:`Processes`::

    with Processes() as procs:
        sim = procs.simulator(latency_ms=100, token="t")
        svc = procs.service(sim, env={"API_KEYS": "k"})
        svc.post([{"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30"}])
    # every process started above is stopped here, even on an exception, Ctrl-C or SIGTERM

Each child runs in its own session (process group), so stopping it also stops whatever it forked
(gunicorn's workers). Output goes to a log file; when a process fails to become ready, the tail of
its log is put in the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from devtools.probes import Samples, cpu_seconds, parse_metrics

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
MEASURE_APP = "measure_service.wsgi:app"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# A response object still referenced keeps its connection open, and on SIGTERM gunicorn waits out
# the keep-alive of idle connections: closing each one keeps teardown fast.
_CLOSE = {"Connection": "close"}


class StartError(RuntimeError):
    """A process exited or never answered its readiness URL."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started child process that serves HTTP on ``url``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://{LOOPBACK}:{self.port}"

    def child_pids(self) -> list[int]:
        """Pids of this process's direct children (gunicorn: its workers)."""
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(child) for child in text.split()]

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far by this process and its live children."""
        return sum(cpu_seconds(pid) for pid in [self.process.pid, *self.child_pids()])

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET a path of this server."""
        return requests.get(f"{self.url}{path}", headers=_CLOSE, timeout=10, **kwargs)

    def metrics(self) -> Samples:
        """The samples of this server's ``/metrics`` (from whichever worker answers)."""
        response = self.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines this process wrote to stdout or stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON object line this process has written so far (stdout and stderr)."""
        lines = []
        for text in self.log_path.read_text(errors="replace").splitlines():
            try:
                document = json.loads(text)
            except ValueError:
                continue
            if isinstance(document, dict):
                lines.append(document)
        return lines


@dataclass
class Simulator(Server):
    """A running Scope3 simulator (``devtools.simulator``) and its control endpoints."""

    def stats(self, query: str = "") -> dict[str, Any]:
        """The simulator's ``/_stats`` document (``query``, e.g. ``?keys=0``, trims it)."""
        document: dict[str, Any] = self.get(f"/_stats{query}").json()
        return document

    def reset(self) -> None:
        """Clear the counters and restore the command-line behaviour."""
        requests.post(f"{self.url}/_reset", headers=_CLOSE, timeout=5).raise_for_status()

    def control(self, **changes: Any) -> None:
        """Change behaviour at runtime (latency_ms, jitter_ms, mode, ...)."""
        requests.post(
            f"{self.url}/_control", json=changes, headers=_CLOSE, timeout=5
        ).raise_for_status()

    def wait_quiet(
        self, quiet_s: float = 0.6, timeout_s: float = 30.0, *, drained: bool = False
    ) -> dict[str, Any]:
        """Wait until no new request arrived for ``quiet_s`` (at most ``timeout_s``), and with
        ``drained`` until every row received was answered too; return the stats
        (``?keys=0&recent=0``) seen last."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while True:
            stats = self.stats("?keys=0&recent=0")
            busy = drained and stats["rows"] != stats["rows_answered"]
            if stats["requests"] != last or busy:
                last, since = stats["requests"], time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return stats
            if time.monotonic() >= deadline:
                return stats
            time.sleep(0.1)


@dataclass
class Service(Server):
    """A running gunicorn serving measure_service; ``api_key`` is the first of its API_KEYS."""

    api_key: str | None = None

    def worker_pids(self) -> set[int]:
        """The pids of gunicorn's workers."""
        return set(self.child_pids())

    def post(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        query: str = "",
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        """POST ``{"rows": rows}`` to /v2/measure with the API key; ``headers`` as in
        :meth:`post_body`."""
        body = json.dumps({"rows": list(rows)}, allow_nan=False).encode()
        return self.post_body(body, query=query, headers=headers, timeout=timeout)

    def post_body(
        self,
        body: bytes | Iterable[bytes],
        content_type: str = "application/json",
        *,
        query: str = "",
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        """POST ``body`` as given (chunked when an iterable) to /v2/measure``query`` with the API
        key; ``headers`` add to or replace the defaults, and one set to None is not sent."""
        sent: dict[str, str | None] = {"Content-Type": content_type, **_CLOSE}
        if self.api_key:
            sent["Authorization"] = f"Bearer {self.api_key}"
        sent.update(headers or {})
        return requests.post(
            f"{self.url}/v2/measure{query}", data=body, headers=sent, timeout=timeout
        )

    def statuses(self, rows: Sequence[Mapping[str, Any]], *, query: str = "") -> list[str]:
        """The row statuses of one POST of ``rows``; any answer but 200 raises, with its body."""
        response = self.post(rows, query=query)
        if response.status_code != 200:
            raise RuntimeError(f"/v2/measure answered {response.status_code}: {response.text}")
        return [row["status"] for row in response.json()["rows"]]

    def warm(self, rows: Sequence[Mapping[str, Any]], timeout_s: float = 15.0) -> None:
        """Ask for ``rows`` until 20 answers in a row are all hits: each on a new connection,
        so every worker's cache holds them."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while streak < 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up: not all hits after {timeout_s:.0f} s")
            if set(self.statuses(rows)) == {"hit"}:
                streak += 1
            else:
                streak = 0
                time.sleep(0.05)


@dataclass
class RedisServer(Server):
    """A ``redis-server`` on loopback, persistence off, that can be killed, hung and restarted.

    ``url`` (``redis://...``, with the password when there is one) stays the same across
    :meth:`kill` and :meth:`restart`, like a server that comes back.
    """

    argv: list[str] = field(default_factory=list)
    password: str | None = None
    faults: int = 0  # kills and pauses so far

    def __post_init__(self) -> None:
        auth = f":{self.password}@" if self.password else ""
        self.url = f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def client(self) -> Any:
        """A plain redis-py client for checks and fault injection (CONFIG SET, FLUSHALL...)."""
        import redis

        return redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password, socket_timeout=5
        )

    def kill(self) -> None:
        """SIGKILL the server: every connection drops, and the data is gone."""
        self.faults += 1
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing is ever answered."""
        self.faults += 1
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start the server again on the same port (after :meth:`kill`), empty."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the server answers PING; raise StartError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(f"redis-server exited:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            time.sleep(0.02)
        raise StartError(f"redis-server did not answer PING:\n{self.log_tail()}")


def wait_ready(server: Server, path: str, timeout_s: float = 30.0) -> None:
    """Poll ``server.url + path`` until it answers 200; raise StartError on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    url = server.url + path
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise StartError(
                f"{server.name} exited with code {server.process.returncode}:\n"
                + server.log_tail()
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, headers=_CLOSE, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise StartError(f"{url} was not ready within {timeout_s:.0f} s:\n" + server.log_tail())


def _wait_for_workers(server: Server, workers: int, ready_path: str, timeout_s: float) -> None:
    # One 200 proves one worker is up; a benchmark needs all of them forked before it measures.
    deadline = time.monotonic() + timeout_s
    while len(server.child_pids()) < workers:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise StartError(
                f"{server.name}: fewer than {workers} workers after {timeout_s} s:\n"
                + server.log_tail()
            )
        time.sleep(0.05)
    for _ in range(2 * workers):
        wait_ready(server, ready_path, timeout_s)


def stop(server: Server, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it outlives ``grace_s``."""
    process = server.process
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # Workers can outlive a master that died first; the group kill reaches them too.
    _signal_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Processes:
    """Starts servers on free loopback ports and stops all of them on exit, newest first."""

    def __init__(
        self, log_dir: Path | None = None, *, service_env: Mapping[str, str] | None = None
    ) -> None:
        """Write each child's output under ``log_dir`` (default: a new temporary directory).

        ``service_env`` is the base environment of every :meth:`service` (its ``env`` overrides).
        """
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="measure-procs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.service_env = dict(service_env or {})
        self._servers: list[Server] = []
        self._previous_sigterm: Any = None

    def __enter__(self) -> Processes:
        if threading.current_thread() is threading.main_thread():
            # A plain SIGTERM would end Python without running __exit__, orphaning the servers.
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)

    def spawn(
        self, name: str, argv: Sequence[str], *, port: int, env: Mapping[str, str] | None = None
    ) -> Server:
        """Run ``argv`` from the project root in its own process group; do not wait for it.

        ``env`` is added to this process's environment; the project root is importable.
        """
        log_path = self.log_dir / f"{name}-{port}.log"
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(ROOT), full_env.get("PYTHONPATH", "")) if part
        )
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name=name, port=port, process=process, log_path=log_path)
        self._servers.append(server)
        return server

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        ready_path: str,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> Server:
        """:meth:`spawn` ``argv`` and wait until ``ready_path`` answers 200 on ``port``."""
        server = self.spawn(name, argv, port=port, env=env)
        wait_ready(server, ready_path, timeout_s)
        return server

    def simulator(
        self,
        *flags: str,
        latency_ms: float = 5,
        jitter_ms: float = 0,
        token: str | None = None,
        port: int | None = None,
    ) -> Simulator:
        """Start ``python -m devtools.simulator``; ``flags`` are extra command-line arguments."""
        port = free_port() if port is None else port
        argv = [
            sys.executable, "-m", "devtools.simulator", "--host", LOOPBACK, "--port", str(port),
            "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms), *flags,
        ]
        if token is not None:
            argv += ["--token", token]
        server = self.start("simulator", argv, port=port, ready_path="/_stats")
        simulator = Simulator(server.name, server.port, server.process, server.log_path)
        self._servers[-1] = simulator
        return simulator

    def gunicorn(
        self,
        app: str,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 2,
        ready_path: str = "/readyz",
        name: str | None = None,
        command: Sequence[str] | None = None,
        port: int | None = None,
    ) -> Server:
        """Start ``gunicorn -c gunicorn.conf.py APP`` with ``workers`` workers on loopback.

        ``command`` replaces that command line (it must bind the ``PORT`` it is given).
        """
        port = free_port() if port is None else port
        argv = list(command) if command is not None else [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), app,
        ]
        full_env = {"WEB_CONCURRENCY": str(workers), **(env or {}),
                    "HOST": LOOPBACK, "PORT": str(port)}
        server = self.start(name or app, argv, port=port, ready_path=ready_path, env=full_env)
        _wait_for_workers(server, int(full_env["WEB_CONCURRENCY"]), ready_path, 30.0)
        return server

    def service(
        self,
        simulator: Server | None,
        *,
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
        command: Sequence[str] | None = None,
        port: int | None = None,
    ) -> Service:
        """Start the measure service in front of ``simulator``; wait until /readyz is 200.

        Its environment is ``service_env`` updated with ``env``; its metrics directory is private.
        """
        port = free_port() if port is None else port
        full_env = {
            "SCOPE3_API_URL": simulator.url if simulator else f"http://{LOOPBACK}:9",
            "PROMETHEUS_MULTIPROC_DIR": str(self.log_dir / f"metrics-{port}"),
            **self.service_env,
            **(env or {}),
        }
        if workers is not None:
            full_env["WEB_CONCURRENCY"] = str(workers)
        server = self.gunicorn(
            MEASURE_APP, env=full_env, name="service", command=command, port=port
        )
        api_key = full_env.get("API_KEYS", "").split(",")[0].strip() or None
        service = Service(server.name, server.port, server.process, server.log_path, api_key)
        self._servers[-1] = service
        return service

    def redis(
        self, *flags: str, password: str | None = None, port: int | None = None
    ) -> RedisServer:
        """Start ``redis-server`` (persistence off, ``allkeys-lfu``); ``flags`` are extra
        command-line options (``--maxmemory 64mb``, ``--cluster-enabled yes``, ...)."""
        port = free_port() if port is None else port
        # Its own directory: a cluster node writes its nodes file there, and nothing lands in
        # the checkout.
        data_dir = self.log_dir / f"redis-{port}"
        data_dir.mkdir(exist_ok=True)
        argv = [
            REDIS_SERVER, "--port", str(port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
            "--dir", str(data_dir), "--maxmemory-policy", "allkeys-lfu", *flags,
        ]
        if password is not None:
            argv += ["--requirepass", password]
        server = self.spawn("redis", argv, port=port)
        redis_server = RedisServer(
            server.name, server.port, server.process, server.log_path, argv=argv,
            password=password,
        )
        self._servers[-1] = redis_server
        redis_server.wait_ready()
        return redis_server

    def stop_all(self) -> None:
        """Stop every server started here, newest first."""
        while self._servers:
            stop(self._servers.pop())
