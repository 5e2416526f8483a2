"""The metrics the service defines are the ones the README's tables document."""

from __future__ import annotations

import re

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
