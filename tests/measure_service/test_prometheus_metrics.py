"""The metrics the service defines: the ones the README documents, recorded as they should be."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from measure_service import prometheus_metrics
from tests.conftest import ROOT

# A row of a README metrics table: | `name` | type | `label`, `label` | meaning |
TABLE_ROW = re.compile(r"^\| `((?:measure|flask)_\w+)` \| ([^|]+?) \|([^|]*)\|", re.M)


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each metric of the README's tables: its type and its labels."""
    readme = (ROOT / "README.md").read_text()
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels)))
            for name, kind, labels in TABLE_ROW.findall(readme)}


def defined() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each metric of ``prometheus_metrics``, named and typed as /metrics shows it."""
    found = {}
    for metric in vars(prometheus_metrics).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            kind = (f"gauge ({metric._multiprocess_mode})" if metric._type == "gauge"
                    else metric._type)
            found[name] = (kind, tuple(metric._labelnames))
    return found


def test_the_readme_documents_every_metric_with_its_type_and_labels() -> None:
    assert documented() == defined()


def test_a_recorded_request_reaches_its_bucket_sum_and_count_at_the_flush() -> None:
    labels = {"method": "PATCH", "path": "recorded", "status": "201"}

    def sample(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    def read() -> tuple[float, float, float, float]:
        return (sample("flask_http_request_duration_seconds_bucket", le="0.001"),
                sample("flask_http_request_duration_seconds_bucket", le="0.002"),
                sample("flask_http_request_duration_seconds_sum"),
                REGISTRY.get_sample_value("flask_http_request_total",
                                          {"method": "PATCH", "status": "201"}) or 0.0)

    prometheus_metrics.flush()
    before = read()
    prometheus_metrics.record_http(("PATCH", "recorded", "201", 0.0015))
    prometheus_metrics.flush()
    after = read()
    assert after[0] == before[0]
    assert after[1] == before[1] + 1
    assert after[2] == pytest.approx(before[2] + 0.0015)
    assert after[3] == before[3] + 1
