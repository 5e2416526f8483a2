"""METRICS_PORT: /metrics on its own listener of a real gunicorn, and only there."""

from __future__ import annotations

import pytest
import requests

from devtools.harness import LOOPBACK, free_port
from tests.conftest import Processes, Service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def service(module_processes: Processes, metrics_port: int) -> Service:
    return module_processes.service(
        module_processes.simulator(), env={"METRICS_PORT": str(metrics_port)}, workers=1
    )


def test_the_metrics_port_serves_the_metrics(metrics_port: int, service: Service) -> None:
    response = requests.get(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=10)
    assert response.status_code == 200 and "measure_cache_max_cost" in response.text


def test_the_public_port_answers_a_json_404_for_metrics(service: Service) -> None:
    response = requests.get(f"{service.url}/metrics", timeout=10)
    assert response.status_code == 404 and response.json()["error"]


def test_the_metrics_port_serves_nothing_else(metrics_port: int, service: Service) -> None:
    response = requests.post(f"http://{LOOPBACK}:{metrics_port}/v2/measure", json={}, timeout=10)
    assert response.status_code == 404 and response.json()["error"]
