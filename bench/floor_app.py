"""The floor for the service load benchmark: the least a Flask POST handler can do.

It parses the JSON body and returns a fixed 5-row answer shaped like the service's, with no
auth, validation, cache, metrics or trace ids. It runs under the service's own
``gunicorn.conf.py`` (same workers, worker class and logging), so the difference between the
two is what the service adds::

    gunicorn -c gunicorn.conf.py bench.floor_app:app
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

_ROW_COUNT = 5
_EMISSIONS = 66.09

# Built once: the floor measures Flask's request and response cost, not building this dict.
FIXED_ANSWER: dict[str, Any] = {
    "requestId": "00000000-0000-0000-0000-000000000000",
    "totalEmissions": round(_EMISSIONS * _ROW_COUNT, 2),
    "rows": [
        {
            "rowIdentifier": f"r{i}",
            "propertyName": f"site{i}.com",
            "utcDateTime": "2024-10-30",
            "weight": 0,
            "totalEmissions": _EMISSIONS,
            "inventoryCoverage": "modeled",
            "status": "hit",
        }
        for i in range(1, _ROW_COUNT + 1)
    ],
    "coverage": {"rows": _ROW_COUNT, "hit": _ROW_COUNT, "fetched": 0, "pending": 0, "error": 0,
                 "invalid": 0},
}

app = Flask(__name__)


@app.post("/v2/measure")
def measure() -> dict[str, Any]:
    """Parse the body as JSON (400 if it is not) and return the fixed answer."""
    request.get_json()
    return FIXED_ANSWER


@app.get("/readyz")
def readyz() -> tuple[str, int]:
    """Ready as soon as the worker serves: lets the benchmark wait for it like for the service."""
    return "ok", 200
