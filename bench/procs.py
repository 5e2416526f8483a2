"""Start and stop the simulator and gunicorn on free loopback ports, for benchmarks.

The whole API is one context manager, :class:`Processes`::

    with Processes() as procs:
        sim = procs.simulator(latency_ms=100, token="t")
        svc = procs.gunicorn("measure_service.wsgi:app", env={"SCOPE3_API_URL": sim.url})
        ...  # drive svc.url
    # every process started above is stopped here, even on an exception, Ctrl-C or SIGTERM

Each child runs in its own session (process group), so stopping it also stops whatever it forked
(gunicorn's workers). Output goes to a log file under a private temporary directory; when a process
fails to become ready, the tail of its log is put in the error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A process exited or never answered its readiness URL."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def client_connections(pid: int, port: int) -> int:
    """Established TCP connections that ``pid`` holds on local port ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01"
                and fields[9] in inodes):
            count += 1
    return count


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
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far by this process and its live children."""
        return sum(_cpu_seconds(pid) for pid in [self.process.pid, *self.child_pids()])

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines this process wrote to stdout or stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise StartError(f"{url} was not ready within {timeout_s:.0f} s:\n" + server.log_tail())


def _wait_for_workers(
    server: Server, workers: int, ready_path: str, timeout_s: float = 30.0
) -> None:
    # One 200 proves one worker is up; a benchmark needs all of them forked before it measures.
    deadline = time.monotonic() + timeout_s
    while len(server.child_pids()) < workers:
        if time.monotonic() > deadline:
            raise StartError(f"{server.name}: fewer than {workers} workers after {timeout_s} s")
        time.sleep(0.1)
    for _ in range(4 * workers):
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

    def __init__(self, log_dir: Path | None = None) -> None:
        """Write each child's output under ``log_dir`` (default: a new temporary directory)."""
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-procs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
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

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        ready_path: str,
        env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> Server:
        """Run ``argv`` from the project root and wait until ``ready_path`` answers 200.

        ``env`` is added to this process's environment. The command must listen on ``port``.
        """
        log_path = self.log_dir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name=name, port=port, process=process, log_path=log_path)
        self._servers.append(server)
        wait_ready(server, ready_path, timeout_s)
        return server

    def simulator(
        self,
        *,
        latency_ms: float = 100,
        jitter_ms: float = 30,
        token: str | None = None,
        extra_args: list[str] | None = None,
    ) -> Server:
        """Start ``python -m measure_service.simulator`` on a free port."""
        port = free_port()
        argv = [
            sys.executable, "-m", "measure_service.simulator", "--host", LOOPBACK,
            "--port", str(port), "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms),
        ]
        if token is not None:
            argv += ["--token", token]
        argv += extra_args or []
        return self.start("simulator", argv, port=port, ready_path="/_stats")

    def gunicorn(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        workers: int = 2,
        ready_path: str = "/readyz",
        name: str | None = None,
    ) -> Server:
        """Start ``gunicorn -c gunicorn.conf.py APP`` with ``workers`` workers on a free port.

        The bind is forced to loopback on the command line, which overrides the config file.
        """
        port = free_port()
        argv = [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "--bind", f"{LOOPBACK}:{port}", app,
        ]
        full_env = {"HOST": LOOPBACK, "PORT": str(port), "WEB_CONCURRENCY": str(workers),
                    **(env or {})}
        server = self.start(name or app, argv, port=port, ready_path=ready_path, env=full_env)
        _wait_for_workers(server, workers, ready_path)
        return server

    def stop_all(self) -> None:
        """Stop every server started here, newest first."""
        while self._servers:
            stop(self._servers.pop())
