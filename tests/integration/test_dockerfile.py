"""The container runs what these tests run: the Dockerfile's CMD and HEALTHCHECK, executed here.

No Docker engine runs on the CI machine, so the image is not built; instead the exact commands
the image would run are taken from the Dockerfile and run against the checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Processes

pytestmark = pytest.mark.integration

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def exec_form(instruction: str) -> list[str]:
    """The JSON (exec form) argument list of the last ``instruction`` line, joined over ``\\``."""
    text = DOCKERFILE.replace("\\\n", " ")
    found = re.findall(rf"^{instruction}\s+(?:.*?\bCMD\s+)?(\[.*\])\s*$", text, re.M)
    assert found, f"no exec-form {instruction} in the Dockerfile"
    argv: list[str] = json.loads(found[-1])
    return argv


def local(argv: list[str]) -> list[str]:
    """The image's command with its console scripts taken from this interpreter's venv."""
    tool = Path(sys.executable).with_name(argv[0])
    return [str(tool) if tool.exists() else argv[0], *argv[1:]]


def test_the_image_command_serves_the_app(processes: Processes) -> None:
    command = exec_form("CMD")
    assert command[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    simulator = processes.simulator()
    service = processes.service(simulator, command=local(command))
    assert service.get("/healthcheck").json()["status"] == "ok"
    assert service.post([{"inventoryId": "docker.example", "utcDatetime": "2024-10-30"}]).ok


def test_the_image_healthcheck_passes_against_a_running_service(processes: Processes) -> None:
    service = processes.service(processes.simulator())
    port = service.url.rsplit(":", 1)[1]
    check = subprocess.run(
        local(exec_form("HEALTHCHECK")), env={**os.environ, "PORT": port}, timeout=10,
        capture_output=True,
    )
    assert check.returncode == 0, check.stderr


def test_the_image_healthcheck_fails_when_nothing_listens() -> None:
    check = subprocess.run(
        local(exec_form("HEALTHCHECK")), env={**os.environ, "PORT": "9"}, timeout=10,
        capture_output=True,
    )
    assert check.returncode != 0
