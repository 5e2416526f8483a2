"""Two instances on a local 3-master Redis Cluster: one fetch per row, and resharding is no error.

Runs in CI (CI=true) or with RUN_CLUSTER_TESTS=1: making the cluster takes a while.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devtools.harness import free_port
from devtools.probes import metric_total
from tests.conftest import (
    Processes,
    RedisServer,
    Service,
    Simulator,
    eventually,
    require_redis_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(module_processes: Processes) -> list[RedisServer]:
    require_redis_server()
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is missing (apt-get install redis-tools)"
    nodes = [
        module_processes.redis(
            "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", port=_cluster_port()
        )
        for _ in range(3)
    ]
    subprocess.run(
        [cli, "--cluster", "create", *[f"127.0.0.1:{node.port}" for node in nodes],
         "--cluster-replicas", "0", "--cluster-yes"],
        check=True, capture_output=True, timeout=120,
    )
    eventually(lambda: all(_state(node) == "ok" for node in nodes), timeout_s=60)
    return nodes


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, at most 65535) is free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _state(node: RedisServer) -> str:
    info = node.client().cluster("INFO")  # redis-py parses it into a dict
    return str(info.get("cluster_state"))


@pytest.fixture(scope="module")
def instances(
    module_processes: Processes, cluster: list[RedisServer]
) -> tuple[Simulator, list[Service]]:
    sim = module_processes.simulator(latency_ms=20)
    env = {"REDIS_URL": cluster[0].url, "REDIS_CLUSTER": "true", "REDIS_TIMEOUT_MS": "500",
           "WAIT_WINDOW_MS": "1000"}
    return sim, [module_processes.service(sim, env=env, workers=2) for _ in range(2)]


def rows(sites: list[str]) -> list[dict[str, Any]]:
    return [{"rowIdentifier": str(i), "inventoryId": s, "utcDatetime": "2024-10-30"}
            for i, s in enumerate(sites)]


def statuses(service: Service, sites: list[str]) -> list[str]:
    return service.statuses(rows(sites))


def fresh(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"c{i}-{tag}.example.com" for i in range(count)]


def shared_errors(service: Service) -> float:
    return metric_total(service.metrics(), "measure_shared_errors_total")


def test_rows_on_a_cluster_are_fetched_once_for_every_worker_of_both_instances(
    instances: tuple[Simulator, list[Service]],
) -> None:
    sim, (first, second) = instances
    sites = fresh(50)  # spread over the three masters' slots
    before = sim.stats("?keys=0")["rows"]
    assert set(statuses(first, sites)) == {"fetched"}
    for service in (first, second) * 4:
        assert set(statuses(service, sites)) == {"hit"}
    assert sim.stats("?keys=0")["rows"] - before == 50


def test_resharding_under_traffic_is_followed_by_the_client_not_turned_into_errors(
    instances: tuple[Simulator, list[Service]], cluster: list[RedisServer]
) -> None:
    _, (first, second) = instances
    sites = fresh(60)
    statuses(first, sites)
    errors_before = shared_errors(second)
    source, target = (node.client().execute_command("CLUSTER MYID") for node in cluster[:2])
    reshard = subprocess.Popen(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster[0].port}",
         "--cluster-from", _text(source), "--cluster-to", _text(target),
         "--cluster-slots", "1000", "--cluster-yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    answers: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        while reshard.poll() is None:
            batch = pool.map(lambda s: statuses(s, sites), [first, second] * 4)
            answers += [status for statuses_ in batch for status in statuses_]
    assert reshard.returncode == 0
    assert set(answers) <= {"hit", "fetched"}
    new_sites = fresh(30)
    assert set(statuses(first, new_sites)) == {"fetched"}
    later = [set(statuses(second, new_sites)) for _ in range(4)]
    errors = {labels: value for (name, labels), value in second.metrics().items()
              if name == "measure_shared_errors_total"}
    logs = [line for line in second.log_lines() if "redis" in str(line).lower()]
    assert later == [{"hit"}] * 4, (errors, logs[-5:])
    assert shared_errors(second) == errors_before


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
