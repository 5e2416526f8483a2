"""Shared helpers of the deploy checks (``make image-test``, ``make dashboard-test``).

These are dev tools run from a checkout, on the host: they start the Scope3 simulator and the
service (or its image) on loopback, and they are not part of the product or of the image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The checks start the simulator and the service with the project's one process harness.
from devtools import probes  # noqa: E402
from devtools.harness import Processes, free_port  # noqa: E402

__all__ = ["Processes", "free_port"]
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


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str,
               interval_s: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy and return it; RuntimeError on timeout.

    A request that fails while the thing polled is still starting counts as not yet.
    """

    def attempt() -> T | None:
        with contextlib.suppress(requests.RequestException):
            return check()
        return None

    try:
        return probes.eventually(attempt, timeout_s, interval_s=interval_s)
    except TimeoutError:
        raise RuntimeError(f"{what}: not within {timeout_s:.0f} s") from None


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
