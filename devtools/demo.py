"""Run the service in front of the bundled Scope3 simulator: what `make demo` starts.

Both processes are children of this one, started by the harness; Ctrl-C (or SIGTERM) stops both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.harness import Processes, Server, StartError  # noqa: E402
from measure_service.config import boolean  # noqa: E402

# The simulator checks this token, so the demo exercises the real upstream auth path.
UPSTREAM_TOKEN = "demo-upstream-token"
EXAMPLE_BODY = (
    '{"rows": [{"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30", '
    '"impressions": 1000, "country": "US", "channel": "web", "deviceType": "pc", '
    '"rowIdentifier": "r1", "weight": 10}]}'
)


def service_env(api_key: str, environ: dict[str, str]) -> dict[str, str]:
    """The demo service's environment: the caller's wait settings, else a 200 ms wait."""
    return {
        "ENV": "demo",
        "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
        "API_KEYS": api_key,
        "WAIT_FOR_MISSING": environ.get("WAIT_FOR_MISSING", "true"),
        "WAIT_WINDOW_MS": environ.get("WAIT_WINDOW_MS", "200"),
        # One worker: each worker has its own cache, and the README's examples show one cache.
        "WEB_CONCURRENCY": environ.get("WEB_CONCURRENCY", "1"),
    }


def banner(port: int, sim_port: int, api_key: str, waits: bool, logs: Path) -> str:
    """What the demo prints once both processes answer; true for both wait modes."""
    if waits:
        first = (
            "The first answer is 'fetched' (the service waits for the simulator, within\n"
            "WAIT_WINDOW_MS);"
        )
    else:
        first = (
            "The first answer is 'pending' (WAIT_FOR_MISSING=false: the service answers at once\n"
            "and fetches in the background);"
        )
    return (
        "\nmeasure-cache is running against the Scope3 simulator.\n"
        f"Service:   http://127.0.0.1:{port}  (metrics at /metrics)\n"
        f"Simulator: http://127.0.0.1:{sim_port}  (stats at /_stats)\n"
        f"Logs:      {logs}\n\n"
        f"Try it. {first} repeat it and it becomes a 'hit'\n"
        "(each worker has its own cache: with WEB_CONCURRENCY=2, each fetches a key once):\n\n"
        f"  curl -s -X POST http://127.0.0.1:{port}/v2/measure \\\n"
        f"    -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n"
        f"    -d '{EXAMPLE_BODY}'\n\n"
        "Press Ctrl-C to stop both.\n"
    )


def serve(name: str, start: Callable[[Processes], tuple[str, list[Server]]]) -> int:
    """Run ``start`` (which starts the stack and returns its banner and processes), print the
    banner, and wait until Ctrl-C or until one of the processes stops."""
    try:
        with Processes() as procs:
            text, servers = start(procs)
            print(text, flush=True)
            while all(server.process.poll() is None for server in servers):
                time.sleep(0.5)
            print(f"{name}: a process stopped; see the logs in {procs.log_dir}", file=sys.stderr)
            return 1
    except StartError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0


def main() -> int:
    """Start the simulator and the service, print a curl example, and wait for Ctrl-C."""
    port = int(os.environ.get("PORT", "3000"))
    sim_port = int(os.environ.get("SIMULATOR_PORT", "8081"))
    api_key = os.environ.get("DEMO_API_KEY", "demo-key")
    env = service_env(api_key, dict(os.environ))

    def start(procs: Processes) -> tuple[str, list[Server]]:
        simulator = procs.simulator(
            latency_ms=100, jitter_ms=30, token=UPSTREAM_TOKEN, port=sim_port
        )
        service = procs.service(simulator, env=env, port=port)
        waits = boolean("WAIT_FOR_MISSING", env["WAIT_FOR_MISSING"])
        return banner(port, sim_port, api_key, waits, procs.log_dir), [service, simulator]

    return serve("demo", start)


if __name__ == "__main__":
    sys.exit(main())
