"""Every README command that talks to the demo stack runs as printed and answers as printed.

The stack is the demo's own (``devtools.demo.service_env``: one worker, the simulator at 100 ms
with jitter), on free ports, with a wait window long enough that a loaded machine still answers
``fetched``. The commands run in README order, through bash; each answer is compared with the
JSON block printed after it, ``requestId`` aside (it is random).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools import demo
from tests.conftest import ROOT, Processes

pytestmark = pytest.mark.integration

DEMO_SERVICE = "127.0.0.1:3000"
DEMO_SIMULATOR = "127.0.0.1:8081"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples(readme: Path) -> list[tuple[str, Any]]:
    """Each demo command, with the document printed after it (None when there is none)."""
    blocks = BLOCK.findall(readme.read_text())
    found = []
    for index, (kind, text) in enumerate(blocks):
        if kind != "sh" or not (DEMO_SERVICE in text or DEMO_SIMULATOR in text):
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        expected = json.loads(following[1]) if following[0] == "json" else None
        found.append((text, expected))
    return found


def without_request_id(document: Any) -> Any:
    if isinstance(document, dict):
        return {name: value for name, value in document.items() if name != "requestId"}
    return document


def test_the_readme_has_demo_examples_with_answers() -> None:
    found = examples(ROOT / "README.md")
    assert len(found) >= 5
    assert sum(expected is not None for _, expected in found) >= 4


def test_every_demo_example_of_the_readme_answers_as_printed(tmp_path: Path) -> None:
    with Processes(tmp_path) as processes:  # the demo's settings, not the tests' defaults
        simulator = processes.simulator(latency_ms=100, jitter_ms=30, token=demo.UPSTREAM_TOKEN)
        env = demo.service_env("demo-key", {"WAIT_WINDOW_MS": "5000"})
        service = processes.service(simulator, env=env)
        run_in_order(examples(ROOT / "README.md"), service.port, simulator.port)


def run_in_order(found: list[tuple[str, Any]], service_port: int, simulator_port: int) -> None:
    for command, expected in found:
        runnable = command.replace(DEMO_SERVICE, f"127.0.0.1:{service_port}").replace(
            DEMO_SIMULATOR, f"127.0.0.1:{simulator_port}"
        )
        done = subprocess.run(
            ["bash", "-c", runnable], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, (command, done.stderr)
        answer = json.loads(done.stdout)
        if expected is not None:
            assert without_request_id(answer) == without_request_id(expected), command
