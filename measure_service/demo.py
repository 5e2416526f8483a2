"""Run the service in front of the bundled Scope3 simulator: what `make demo` starts.

Both processes are children of this one; Ctrl-C (or SIGTERM) stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The simulator checks this token, so the demo exercises the real upstream auth path.
UPSTREAM_TOKEN = "demo-upstream-token"


def _wait_until_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {proc.args!r} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: {url} was not ready within {timeout_s:.0f} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (e.g. from a process manager) takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


def main() -> int:
    """Start the simulator and the service, print a curl example, and wait for Ctrl-C."""
    port = int(os.environ.get("PORT", "3000"))
    sim_port = int(os.environ.get("SIMULATOR_PORT", "8081"))
    api_key = os.environ.get("DEMO_API_KEY", "demo-key")

    simulator = subprocess.Popen(
        [sys.executable, "-m", "measure_service.simulator", "--host", "127.0.0.1",
         "--port", str(sim_port), "--latency-ms", "100", "--jitter-ms", "30",
         "--token", UPSTREAM_TOKEN],
        cwd=ROOT,
    )
    procs = [simulator]
    try:
        _wait_until_ready(f"http://127.0.0.1:{sim_port}/_stats", 20, simulator)
        env = {
            **os.environ,
            "PORT": str(port),
            "ENV": "demo",
            "SCOPE3_API_URL": f"http://127.0.0.1:{sim_port}",
            "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
            "API_KEYS": api_key,
            "WAIT_FOR_MISSING": os.environ.get("WAIT_FOR_MISSING", "true"),
            "WAIT_WINDOW_MS": os.environ.get("WAIT_WINDOW_MS", "200"),
            "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "2"),
        }
        service = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "measure_service.wsgi:app"],
            cwd=ROOT,
            env=env,
        )
        procs.append(service)
        _wait_until_ready(f"http://127.0.0.1:{port}/readyz", 30, service)
        body = (
            '{"rows": [{"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30", '
            '"impressions": 1000, "country": "US", "channel": "web", "deviceType": "pc", '
            '"rowIdentifier": "r1", "weight": 10}]}'
        )
        print(
            "\nmeasure-cache is running against the Scope3 simulator.\n"
            f"Service:   http://127.0.0.1:{port}  (metrics at /metrics)\n"
            f"Simulator: http://127.0.0.1:{sim_port}  (stats at /_stats)\n\n"
            "Try it. The first answer is 'fetched' (from the simulator, within the wait window);\n"
            "repeat it and it becomes a 'hit' (each worker keeps its own cache, so with\n"
            "WEB_CONCURRENCY=2 the second worker fetches once too):\n\n"
            f"  curl -s -X POST http://127.0.0.1:{port}/v2/measure \\\n"
            f"    -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n"
            f"    -d '{body}'\n\n"
            "Press Ctrl-C to stop both.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


if __name__ == "__main__":
    sys.exit(main())
