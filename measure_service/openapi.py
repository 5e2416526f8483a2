"""Serves the service's OpenAPI 3.1 description (``openapi.yaml``, shipped in the package)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response

SPEC_FILE = "openapi.yaml"

bp = Blueprint("openapi", __name__)


@functools.cache
def spec() -> dict[str, Any]:
    """The OpenAPI document, parsed once per process."""
    text = resources.files(__package__).joinpath(SPEC_FILE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{SPEC_FILE} must hold a mapping")
    return document


@functools.cache
def _spec_json() -> str:
    return json.dumps(spec(), separators=(",", ":"))


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI description of every endpoint, as JSON."""
    return Response(_spec_json(), mimetype="application/json")
