"""The floors for the service load benchmark: the least a POST handler can do.

Both return a fixed 5-row answer shaped like the service's, with no auth, validation, cache,
metrics or trace ids:

- ``app``: a Flask view that parses the JSON body;
- ``bare``: a plain WSGI function that reads the body and answers pre-encoded bytes, the
  server's own limit.

They run under the service's own ``gunicorn.conf.py`` (same workers, worker class and logging),
so the difference is what the service adds::

    gunicorn -c gunicorn.conf.py bench.floor_app:app
    gunicorn -c gunicorn.conf.py bench.floor_app:bare
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
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


_BARE_BODY = json.dumps(FIXED_ANSWER, separators=(",", ":")).encode()
_BARE_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_BARE_BODY)))]


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the body, answer the fixed document; ``/readyz`` and every other path get it too."""
    length = environ.get("CONTENT_LENGTH")
    if length:
        environ["wsgi.input"].read(int(length))
    start_response("200 OK", _BARE_HEADERS)
    return [_BARE_BODY]
