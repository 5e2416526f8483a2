"""The Scope3 simulator: its answers, its faults and its bookkeeping, in process and on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import Client, TestResponse

from devtools.simulator import Faults, Scope3Simulator, measure_row, row_key

TOKEN = "sim-token"
ROOT = Path(__file__).resolve().parents[2]


class _Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class _Event:
    """Stands in for a hang's release event: records the wait instead of blocking."""

    def __init__(self) -> None:
        self.waited: float | None = None
        self.released = False

    def set(self) -> None:
        self.released = True

    def wait(self, timeout: float | None = None) -> bool:
        self.waited = timeout
        return self.released


def _row(identifier: str = "r1", **fields: Any) -> dict[str, Any]:
    row = {"rowIdentifier": identifier, "inventoryId": "nytimes.com", "utcDatetime": "2024-10-30",
           "impressions": 1000, "country": "US", "channel": "web", "deviceType": "pc",
           "region": None, "network": None}
    row.update(fields)
    return row


def _simulator(**faults: Any) -> tuple[Scope3Simulator, _Sleeps, list[_Event]]:
    sleeps = _Sleeps()
    events: list[_Event] = []

    def new_event() -> _Event:
        events.append(_Event())
        return events[-1]

    settings = {"latency_ms": 0.0, "jitter_ms": 0.0, **faults}
    app = Scope3Simulator(Faults(**settings), token=TOKEN, sleep=sleeps, clock=lambda: 1234.5,
                          event_factory=new_event)
    return app, sleeps, events


def _measure(app: Scope3Simulator, rows: list[dict[str, Any]], *, token: str | None = TOKEN,
             query: str = "includeRows=true", agent: str = "test-agent") -> TestResponse:
    headers = {"User-Agent": agent}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return Client(app).post(f"/v2/measure?{query}", json={"rows": rows}, headers=headers)


def _body(response: TestResponse) -> Any:
    return json.loads(response.data)


def _stats(app: Scope3Simulator, query: str = "") -> Any:
    return _body(Client(app).get(f"/_stats{query}"))


def _control(app: Scope3Simulator, **changes: Any) -> TestResponse:
    return Client(app).post("/_control", json=changes)


# --- answers -------------------------------------------------------------------------------------

def test_nytimes_at_1000_impressions_is_about_66_grams() -> None:
    grams = measure_row(_row(), {})["totalEmissions"]
    assert 60.0 < grams < 72.0


def test_values_are_deterministic_across_processes() -> None:
    code = ("import json, sys; from devtools.simulator import measure_row; "
            "print(json.dumps(measure_row(json.loads(sys.argv[1]), {})))")
    row = _row(inventoryId="example.org", country="DE")
    outputs = {
        subprocess.run([sys.executable, "-c", code, json.dumps(row)], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
        for _ in range(2)
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == measure_row(row, {})


def test_values_scale_linearly_with_impressions() -> None:
    one = measure_row(_row(impressions=1000), {})["totalEmissions"]
    three = measure_row(_row(impressions=3000), {})["totalEmissions"]
    assert three == pytest.approx(3 * one, rel=1e-6)


@pytest.mark.parametrize(
    "change", [{"country": "FR"}, {"deviceType": "mobile"}, {"utcDatetime": "2024-10-31"},
               {"inventoryId": "nba.com"}],
)
def test_fields_that_matter_change_the_value(change: dict[str, Any]) -> None:
    assert measure_row(_row(**change), {}) != measure_row(_row(), {})


def test_the_framework_parameter_changes_the_value() -> None:
    assert measure_row(_row(), {"framework": "gmsf"}) != measure_row(_row(), {})


def test_a_dotless_inventory_id_gets_a_row_error_and_no_emissions() -> None:
    answer = measure_row(_row(inventoryId="nytimes"), {})
    assert answer["totalEmissions"] is None
    assert "nytimes" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"inventoryId": None}, "inventoryId"), ({"utcDatetime": ""}, "utcDatetime"),
     ({"impressions": -5}, "impressions"), ({"impressions": "many"}, "impressions")],
)
def test_a_row_missing_what_scope3_needs_gets_a_row_error(
    change: dict[str, Any], named: str
) -> None:
    assert named in measure_row(_row(**change), {})["error"]["message"]


def test_an_answer_keeps_request_order_and_echoes_identifiers() -> None:
    app, _, _ = _simulator()
    rows = [_row("b"), _row("a", inventoryId="nba.com"), _row("c", inventoryId="bad")]
    document = _body(_measure(app, rows))
    assert [row["rowIdentifier"] for row in document["rows"]] == ["b", "a", "c"]
    assert document["totalEmissions"] == pytest.approx(
        sum(row["totalEmissions"] or 0.0 for row in document["rows"]))
    assert document["requestId"]


def test_the_key_joins_the_fields_that_matter() -> None:
    key = row_key(_row(), {"framework": "gmsf", "latest": "true"})
    assert key == "nytimes.com|2024-10-30|1000|US||web|pc||gmsf|true"


# --- auth and bad requests -----------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_a_missing_or_wrong_token_gets_401(token: str | None) -> None:
    app, _, _ = _simulator()
    response = _measure(app, [_row()], token=token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_without_a_configured_token_any_caller_is_answered() -> None:
    app = Scope3Simulator(Faults(latency_ms=0, jitter_ms=0), sleep=lambda s: None)
    assert _measure(app, [_row()], token=None).status_code == 200


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"rows": 3}', b'{"rows": [1]}'])
def test_a_body_that_is_not_a_rows_object_gets_400(body: bytes) -> None:
    app, _, _ = _simulator()
    response = Client(app).post("/v2/measure", data=body,
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert _body(response)["message"]


def test_unknown_paths_get_404_and_wrong_methods_405() -> None:
    app, _, _ = _simulator()
    assert Client(app).get("/nowhere").status_code == 404
    assert Client(app).get("/v2/measure").status_code == 405


# --- stats and reset -----------------------------------------------------------------------------

def test_stats_count_requests_rows_statuses_and_keys() -> None:
    app, _, _ = _simulator()
    _measure(app, [_row("a"), _row("b", inventoryId="nba.com")])
    _measure(app, [_row("a")])
    _measure(app, [_row("a")], token="wrong")
    stats = _stats(app)
    assert (stats["requests"], stats["rows"], stats["rows_answered"]) == (3, 3, 3)
    assert stats["by_status"] == {"200": 2, "401": 1}
    assert stats["rows_per_key"] == {
        "nytimes.com|2024-10-30|1000|US||web|pc|||": 2,
        "nba.com|2024-10-30|1000|US||web|pc|||": 1,
    }


def test_stats_count_keys_repeated_by_one_agent_separately_for_each_agent() -> None:
    app, _, _ = _simulator()
    _measure(app, [_row("a")], agent="worker-1")
    _measure(app, [_row("a")], agent="worker-2")
    assert _stats(app)["repeated_keys_by_agent"] == {}
    _measure(app, [_row("a")], agent="worker-2")
    assert _stats(app)["repeated_keys_by_agent"] == {"worker-2": 1}
    by_agent = _body(Client(app).get("/_stats?by_agent=1"))["rows_per_key_by_agent"]
    assert by_agent == {"worker-1": {row_key(_row(), {}): 1}, "worker-2": {row_key(_row(), {}): 2}}


def test_stats_log_recent_requests_with_arrival_agent_rows_and_status() -> None:
    app, _, _ = _simulator()
    _measure(app, [_row("a"), _row("b")], agent="measure-cache/1.0 (pid 42)")
    assert _stats(app)["recent"] == [
        {"time": 1234.5, "user_agent": "measure-cache/1.0 (pid 42)", "rows": 2, "status": "200"}]


def test_stats_can_leave_out_keys_and_recent() -> None:
    app, _, _ = _simulator()
    _measure(app, [_row()])
    document = _body(Client(app).get("/_stats?keys=0&recent=0"))
    assert "rows_per_key" not in document and "recent" not in document
    assert document["rows"] == 1


def test_reset_clears_stats_and_restores_the_command_line_settings() -> None:
    app, _, _ = _simulator(error_rate=0.5)
    _control(app, mode="500", latency_ms=7)
    _measure(app, [_row()])
    _measure(app, [_row()])
    assert Client(app).post("/_reset").status_code == 200
    stats = _stats(app)
    assert (stats["requests"], stats["rows"], stats["by_status"], stats["rows_per_key"],
            stats["repeated_keys_by_agent"], stats["recent"]) == (0, 0, {}, {}, {}, [])
    assert stats["control"]["mode"] == "ok"
    assert stats["control"]["error_rate"] == 0.5
    assert stats["control"]["latency_ms"] == 0.0


# --- control and faults --------------------------------------------------------------------------

def test_control_changes_any_subset_of_the_settings() -> None:
    app, _, _ = _simulator()
    response = _control(app, latency_ms=5, retry_after=3)
    assert _body(response)["control"]["latency_ms"] == 5
    assert _body(response)["control"]["retry_after"] == 3
    assert _body(response)["control"]["mode"] == "ok"


def test_get_control_reports_the_current_settings() -> None:
    app, _, _ = _simulator(error_rate=0.25)
    assert _body(Client(app).get("/_control"))["control"]["error_rate"] == 0.25


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"speed": 1}, "speed"), ({"error_rate": 2}, "error_rate"), ({"latency_ms": -1}, "latency_ms"),
     ({"mode": "explode"}, "mode"), ({"hang_rate": "half"}, "hang_rate")],
)
def test_control_rejects_bad_settings_with_400_naming_the_field(
    changes: dict[str, Any], named: str
) -> None:
    app, _, _ = _simulator()
    response = _control(app, **changes)
    assert response.status_code == 400
    assert named in _body(response)["message"]


def test_latency_and_jitter_set_the_delay_before_answering() -> None:
    app, sleeps, _ = _simulator(latency_ms=100, jitter_ms=30)
    for _ in range(20):
        _measure(app, [_row()])
    assert all(0.07 <= delay <= 0.13 for delay in sleeps.calls)
    assert len(set(sleeps.calls)) > 1


def test_mode_500_answers_500() -> None:
    app, _, _ = _simulator(mode="500")
    assert _measure(app, [_row()]).status_code == 500
    assert _stats(app)["by_status"] == {"500": 1}


def test_mode_429_answers_429_with_retry_after() -> None:
    app, _, _ = _simulator(mode="429", retry_after=2)
    response = _measure(app, [_row()])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"


def test_mode_malformed_answers_200_with_a_body_that_is_not_json() -> None:
    app, _, _ = _simulator(mode="malformed")
    response = _measure(app, [_row()])
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.get_json(force=True)


def test_mode_reset_aborts_the_connection() -> None:
    app, _, _ = _simulator(mode="reset")
    with pytest.raises(ConnectionResetError):
        _measure(app, [_row()])
    assert _stats(app)["by_status"] == {"reset": 1}


def test_mode_slow_body_trickles_the_answer_in_pieces() -> None:
    app, sleeps, _ = _simulator(mode="slow_body")
    response = _measure(app, [_row(str(n)) for n in range(20)])
    assert len(_body(response)["rows"]) == 20
    assert len(sleeps.calls) > 10


def test_mode_hang_waits_for_release_before_answering() -> None:
    app, _, events = _simulator(mode="hang")
    response = _measure(app, [_row()])
    assert events[0].waited is not None and events[0].waited >= 60
    assert response.status_code == 504
    assert _stats(app)["by_status"] == {"hang": 1}


def test_control_releases_requests_that_hang() -> None:
    app, _, events = _simulator(mode="hang")
    _control(app, mode="ok")
    assert events[0].released
    assert not events[-1].released


def test_an_error_rate_of_one_fails_every_request() -> None:
    app, _, _ = _simulator(error_rate=1.0)
    assert {_measure(app, [_row()]).status_code for _ in range(5)} == {500}


def test_fault_rates_are_reproducible_for_a_seed() -> None:
    def statuses() -> list[int]:
        app, _, _ = _simulator(error_rate=0.3, status_429_rate=0.3)
        return [_measure(app, [_row()]).status_code for _ in range(30)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 429, 500}


# --- on loopback ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.simulator", "--port", "0", "--latency-ms", "5",
         "--jitter-ms", "1", "--token", TOKEN],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip().rsplit(" ", 1)[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_command_line_server_answers_and_counts_on_loopback(live: str) -> None:
    response = requests.post(
        f"{live}/v2/measure?includeRows=true",
        json={"rows": [_row("a"), _row("b", inventoryId="x")]},
        headers={"Authorization": f"Bearer {TOKEN}", "User-Agent": "smoke"}, timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["rows"][0]["totalEmissions"] == measure_row(_row("a"), {})[
        "totalEmissions"]
    stats = requests.get(f"{live}/_stats", timeout=5).json()
    assert stats["recent"][-1]["user_agent"] == "smoke"
    assert stats["rows"] == 2


def test_the_command_line_rejects_bad_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devtools.simulator", "--error-rate", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "error_rate" in result.stderr


@pytest.mark.parametrize(("marker", "status"), [("poison_5xx", 500), ("poison_400", 400)])
def test_a_poisoned_row_fails_the_whole_request_it_is_in(marker: str, status: int) -> None:
    app, _, _ = _simulator(**{marker: "bad-row"})
    mixed = [_row("r1"), _row("r2", inventoryId="x-bad-row-1.com")]
    assert _measure(app, mixed).status_code == status
    assert _measure(app, [_row("r1")]).status_code == 200
    assert _stats(app)["by_status"] == {str(status): 1, "200": 1}


def _mixed() -> list[dict[str, Any]]:
    return [_row("r1"), _row("r2", inventoryId="x-bad-row-1.com"), _row("r3", country="FR")]


def test_a_row_poisoned_to_hang_gets_its_request_no_answer_until_released() -> None:
    app, _, events = _simulator(poison_hang="bad-row")
    assert _measure(app, _mixed()).status_code == 504
    assert events[0].waited is not None and events[0].waited >= 600
    assert _stats(app)["by_status"] == {"hang": 1}


def test_a_row_poisoned_to_be_slow_gets_its_request_a_right_answer_late() -> None:
    app, sleeps, _ = _simulator(poison_slow="bad-row", poison_slow_ms=2500)
    answer = _body(_measure(app, _mixed()))
    assert sleeps.calls == [2.5]
    assert [row["rowIdentifier"] for row in answer["rows"]] == ["r1", "r2", "r3"]


def test_a_row_poisoned_to_reset_aborts_the_connection() -> None:
    app, _, _ = _simulator(poison_reset="bad-row")
    with pytest.raises(ConnectionResetError):
        _measure(app, _mixed())


def test_a_row_poisoned_to_be_malformed_gets_its_request_a_200_that_is_not_json() -> None:
    app, _, _ = _simulator(poison_malformed="bad-row")
    response = _measure(app, _mixed())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.data)


def test_a_row_poisoned_to_cut_the_answer_short_leaves_it_and_the_rows_after_it_out() -> None:
    app, _, _ = _simulator(poison_short="bad-row")
    answer = _body(_measure(app, _mixed()))
    assert [row["rowIdentifier"] for row in answer["rows"]] == ["r1"]


def test_a_row_poisoned_to_spoil_identities_answers_with_another_rows_identifier() -> None:
    app, _, _ = _simulator(poison_identity="bad-row")
    answer = _body(_measure(app, _mixed()))
    assert [row["rowIdentifier"] for row in answer["rows"]] == ["r3", "r1", "r1"]
    alone = _body(_measure(app, [_row("r2", inventoryId="bad-row.com")]))
    assert [row["rowIdentifier"] for row in alone["rows"]] == ["r2-x"]


def test_a_row_poisoned_to_fail_every_row_answers_each_with_an_error() -> None:
    app, _, _ = _simulator(poison_row_error="bad-row")
    answer = _body(_measure(app, _mixed()))
    assert [row["error"] is not None for row in answer["rows"]] == [True] * 3
    assert all(row["totalEmissions"] is None for row in answer["rows"])


def test_poisoning_is_off_until_a_marker_is_set() -> None:
    app, _, _ = _simulator()
    assert _measure(app, [_row(inventoryId="poison-anything.com")]).status_code == 200


def test_poison_markers_can_be_set_at_runtime() -> None:
    app, _, _ = _simulator()
    assert _control(app, poison_400="evil").status_code == 200
    assert _measure(app, [_row(inventoryId="evil.com")]).status_code == 400


def test_stats_report_the_most_requests_in_flight_per_agent() -> None:
    app, _, _ = _simulator()
    _measure(app, [_row()], agent="w1")
    stats = _stats(app, "?by_agent=1")
    assert stats["max_in_flight"] == 1 and stats["max_in_flight_by_agent"] == {"w1": 1}
