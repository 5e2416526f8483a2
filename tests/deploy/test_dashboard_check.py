"""What ``make dashboard-test`` does without Prometheus: reading and interpolating the queries."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "deploy" / "checks"


def _load(name: str) -> ModuleType:
    if str(CHECKS) not in sys.path:
        sys.path.insert(0, str(CHECKS))
    spec = importlib.util.spec_from_file_location(f"deploy_checks_{name}", CHECKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dashboard_test = _load("dashboard_test")
DASHBOARD = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
VARIABLES = {"job": ".*", "instance": ".*", "__rate_interval": "4s"}


def test_every_panel_of_the_dashboard_has_queries() -> None:
    panels, queries = dashboard_test.dashboard_queries(DASHBOARD)
    assert panels > 0
    assert len({query.panel for query in queries}) == panels


def test_every_query_uses_only_the_variables_the_check_fills_in() -> None:
    _, queries = dashboard_test.dashboard_queries(DASHBOARD)
    for query in queries:
        assert "$" not in dashboard_test.interpolate(query.expr, VARIABLES), query.panel


def test_an_unknown_variable_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(AssertionError, match=r"\$interval"):
        dashboard_test.interpolate("rate(x[$interval])", VARIABLES)


def test_braced_and_bare_variables_are_both_replaced() -> None:
    assert dashboard_test.interpolate('x{job=~"${job}"}[$__rate_interval]', VARIABLES) == (
        'x{job=~".*"}[4s]'
    )


def test_a_selected_value_is_escaped_for_a_promql_regex_string() -> None:
    escaped = dashboard_test.regex_value(["127.0.0.1:3000"])
    assert escaped == r"127\\.0\\.0\\.1:3000"
    # Inside a PromQL double-quoted string \\. is the regex \. : a literal dot.
    assert re.fullmatch(escaped.replace("\\\\", "\\"), "127.0.0.1:3000")
    assert not re.fullmatch(escaped.replace("\\\\", "\\"), "127x0x0x1:3000")


def test_several_selected_values_become_an_alternation() -> None:
    assert dashboard_test.regex_value(["a", "b"]) == "(a|b)"


def test_a_label_value_the_traffic_drove_but_no_series_drew_is_reported() -> None:
    series = [{"metric": {"to": "open"}}, {"metric": {"to": "closed"}}]
    missing = dashboard_test.missing_driven(
        "increase(measure_upstream_breaker_transitions_total[4s])", series, [True, False]
    )
    assert missing == {"to=closed", "to=half_open"}


def test_readme_examples_are_split_into_whole_expressions() -> None:
    text = (
        "```promql\n# Ratio\n  (sum(rate(a[5m]))\n/ sum(rate(b[5m])))\n\n"
        "# Two quantiles\nhistogram_quantile(0.5, x)\nhistogram_quantile(0.99, x)\n```\n"
    )
    queries = dashboard_test.readme_queries(text)
    assert [(query.panel, query.expr) for query in queries] == [
        ("README: Ratio", "(sum(rate(a[5m])) / sum(rate(b[5m])))"),
        ("README: Two quantiles", "histogram_quantile(0.5, x)"),
        ("README: Two quantiles", "histogram_quantile(0.99, x)"),
    ]
