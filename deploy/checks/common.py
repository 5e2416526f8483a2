"""Shared helpers of the deploy checks (``make image-test``, ``make dashboard-test``).

These are dev tools run from a checkout, on the host: they start the Scope3 simulator and the
service (or its image) on loopback, and they are not part of the product or of the image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parents[2]
# The simulator is a dev tool of the checkout: its module path is the one place naming it.
SIMULATOR_MODULE = os.environ.get("SIMULATOR_MODULE", "devtools.simulator")
API_KEY = "deploy-check-key"
UPSTREAM_TOKEN = "deploy-check-upstream-token"

T = TypeVar("T")


class Skip(Exception):
    """The machine cannot run this check; the message says why."""


def say(name: str, message: str) -> None:
    """One progress line, prefixed by the check's name."""
    print(f"{name}: {message}", flush=True)


def skip_or_fail(name: str, reason: str) -> int:
    """Print one line saying why the check did not run; in CI (CI=true) that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        print(f"{name}: FAILED, cannot run in CI: {reason}", flush=True)
        return 1
    print(f"{name}: SKIPPED: {reason}", flush=True)
    return 0


def ensure_commands(name: str, commands: Mapping[str, str]) -> None:
    """Make each command (key) available, apt-installing its package (value) as root if missing."""
    missing = {command: package for command, package in commands.items()
               if shutil.which(command) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        raise Skip(f"needs {', '.join(sorted(missing))} (apt packages {' '.join(packages)}), "
                   "and only root can install them")
    say(name, f"installing {' '.join(packages)} with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    install = [*apt, "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*apt, "update"], env=env, stdout=subprocess.DEVNULL)
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise Skip(f"apt-get install {' '.join(packages)} failed")
    still = [command for command in missing if shutil.which(command) is None]
    if still:
        raise Skip(f"{', '.join(still)} still missing after installing {' '.join(packages)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str,
               interval_s: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy and return it; RuntimeError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


class Processes:
    """Host processes of one check, each logging to a file; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        """Write each process's output to a file in ``log_dir``."""
        self.log_dir = log_dir
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str],
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` from the checkout's root with ``env`` added to ours."""
        with open(self.log_dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                list(argv), cwd=ROOT, env={**os.environ, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT,
            )
        self._running.append(process)
        return process

    def simulator(self, latency_ms: float = 20, jitter_ms: float = 5) -> str:
        """Start the Scope3 simulator on a free loopback port; return its base URL."""
        port = free_port()
        process = self.start("simulator", [
            sys.executable, "-m", SIMULATOR_MODULE, "--host", "127.0.0.1", "--port", str(port),
            "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms),
            "--token", UPSTREAM_TOKEN,
        ])
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _alive(process) and requests.get(f"{url}/_stats", timeout=2).ok,
                   20, f"simulator ({SIMULATOR_MODULE}) answering on {url}")
        return url

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a process wrote."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        """SIGTERM every process, SIGKILL those still alive after 10 s."""
        for process in self._running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running.clear()


def _alive(process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    return True


def measure_rows(prefix: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    """``count`` valid rows with inventory ids ``<prefix>-<i>.example``."""
    return [{"inventoryId": f"{prefix}-{i}.example", "utcDatetime": "2024-10-30",
             "impressions": 1000, "country": "US", "channel": "web", **fields}
            for i in range(count)]


def post_rows(session: requests.Session | None, url: str, rows: Sequence[Mapping[str, Any]],
              timeout: float = 15) -> requests.Response:
    """POST ``{"rows": rows}`` to ``url``/v2/measure with the checks' API key."""
    sender: Any = session if session is not None else requests
    response: requests.Response = sender.post(
        f"{url}/v2/measure", json={"rows": list(rows)}, timeout=timeout,
        headers={"Authorization": f"Bearer {API_KEY}"})
    return response


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A fresh temporary directory for one run, removed afterwards."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"measure-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
