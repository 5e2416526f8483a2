"""Two instances of the service sharing one local Redis: what `make demo-shared` starts.

A ``redis-server`` (persistence off), the Scope3 simulator and two instances of 2 gevent workers
on two ports, all children of this process, started by the harness; Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.demo import EXAMPLE_BODY, UPSTREAM_TOKEN, serve, service_env  # noqa: E402
from devtools.harness import REDIS_SERVER, Processes, Server  # noqa: E402


def banner(ports: list[int], sim_port: int, redis_url: str, api_key: str, logs: Path) -> str:
    """What the demo prints once everything answers."""
    curls = "\n".join(
        f"  curl -s -X POST http://127.0.0.1:{port}/v2/measure \\\n"
        f"    -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n"
        f"    -d '{EXAMPLE_BODY}'\n"
        for port in ports
    )
    return (
        "\nTwo measure-cache instances (2 workers each) share one Redis.\n"
        f"Instances: http://127.0.0.1:{ports[0]} and http://127.0.0.1:{ports[1]}\n"
        f"Redis:     {redis_url}  (redis-cli -u {redis_url} --scan)\n"
        f"Simulator: http://127.0.0.1:{sim_port}  (stats at /_stats)\n"
        f"Logs:      {logs}\n\n"
        "Ask the first instance: the row is 'fetched' once. Then ask either instance, as often as\n"
        "you like: every worker of both answers 'hit', from its memory or from Redis:\n\n"
        f"{curls}\n"
        "Upstream saw that row once, however many workers answered it:\n\n"
        f"  curl -s http://127.0.0.1:{sim_port}/_stats | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"rows\"])'\n\n"
        f"Readiness says how the shared tier is: curl -s http://127.0.0.1:{ports[0]}/readyz\n"
        "Press Ctrl-C to stop everything.\n"
    )


def main() -> int:
    """Start Redis, the simulator and two instances, print curl examples, wait for Ctrl-C."""
    if not Path(REDIS_SERVER).exists():
        print("demo-shared: redis-server is not installed (apt-get install redis-server)",
              file=sys.stderr)
        return 1
    port = int(os.environ.get("PORT", "3000"))
    ports = [port, int(os.environ.get("SECOND_PORT", str(port + 1)))]
    sim_port = int(os.environ.get("SIMULATOR_PORT", "8081"))
    api_key = os.environ.get("DEMO_API_KEY", "demo-key")

    def start(procs: Processes) -> tuple[str, list[Server]]:
        redis = procs.redis("--maxmemory", "256mb")
        simulator = procs.simulator(
            latency_ms=100, jitter_ms=30, token=UPSTREAM_TOKEN, port=sim_port
        )
        env = {**service_env(api_key, dict(os.environ)), "WEB_CONCURRENCY": "2",
               "REDIS_URL": redis.url}
        services = [procs.service(simulator, env=env, port=p) for p in ports]
        text = banner(ports, sim_port, redis.url, api_key, procs.log_dir)
        return text, [*services, simulator, redis]

    return serve("demo-shared", start)


if __name__ == "__main__":
    sys.exit(main())
