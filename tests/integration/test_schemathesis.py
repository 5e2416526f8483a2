"""schemathesis against the live service (real gunicorn, simulator upstream).

Requests generated from ``openapi.yaml``, valid (positive) and invalid (negative), must never get
a 5xx, and every response must conform to the document: documented status, content type, headers
and body schema. Budgets: ``MEASURE_SCHEMATHESIS_EXAMPLES`` examples per mode for
``POST /v2/measure`` (default 25 for ``make test``; ``bench/fuzz.sh`` runs thousands).

``negative_data_rejection`` is deliberately not checked: by contract a row that fails validation
is answered 200 with status ``invalid`` (naming the field), not refused as a whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from measure_service import openapi
from tests.conftest import UPSTREAM_TOKEN, Processes, Service

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MEASURE_SCHEMATHESIS_EXAMPLES", "25"))
# bench/fuzz.sh names a file here to collect how many requests each test sent.
REPORT = os.environ.get("MEASURE_FUZZ_REPORT")
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_headers_conformance, response_schema_conformance,
]
SCHEMA = schemathesis.openapi.from_dict(openapi.spec())
MEASURE = SCHEMA["/v2/measure"]["POST"]
PROBES = ["/healthcheck", "/readyz", "/metrics", "/openapi.json"]
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def live(module_processes: Processes) -> Service:
    simulator = module_processes.simulator(token=UPSTREAM_TOKEN)
    return module_processes.service(simulator, env={"WAIT_WINDOW_MS": "100"})


@pytest.fixture(scope="module")
def session(live: Service) -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


def report(test: str, requests_sent: int) -> None:
    """Append the request count of a passing test to ``MEASURE_FUZZ_REPORT``, if set."""
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, "requests": requests_sent}) + "\n")


def call_and_check(case: schemathesis.Case, live: Service, session: requests.Session) -> None:
    """Send ``case`` with a valid key (unless it carries its own) and run the checks."""
    headers = {} if "Authorization" in (case.headers or {}) else {
        "Authorization": f"Bearer {live.api_key}"
    }
    response = case.call(base_url=live.url, session=session, headers=headers, timeout=10)
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_measure_requests_get_no_5xx_and_conforming_answers(
    live: Service, session: requests.Session, mode: GenerationMode
) -> None:
    sent = 0

    @SETTINGS
    @given(case=MEASURE.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        call_and_check(case, live, session)

    run()
    report(f"POST /v2/measure {mode.value}", sent)


@pytest.mark.parametrize("path", PROBES)
def test_probes_answer_as_documented(
    live: Service, session: requests.Session, path: str
) -> None:
    sent = 0

    @settings(max_examples=3, deadline=None)
    @given(case=SCHEMA[path]["GET"].as_strategy())
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        call_and_check(case, live, session)

    run()
    report(f"GET {path}", sent)
