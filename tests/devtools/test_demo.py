"""The demo's banner says what the first answer will be, in both wait modes."""

from __future__ import annotations

from pathlib import Path

from devtools.demo import banner, service_env


def test_the_banner_promises_fetched_when_the_service_waits() -> None:
    text = banner(3000, 8081, "k", waits=True, logs=Path("/tmp"))
    assert "first answer is 'fetched'" in text and "'pending'" not in text


def test_the_banner_promises_pending_when_the_service_does_not_wait() -> None:
    text = banner(3000, 8081, "k", waits=False, logs=Path("/tmp"))
    assert "first answer is 'pending'" in text and "'fetched'" not in text


def test_the_demo_keeps_the_callers_wait_settings() -> None:
    env = service_env("k", {"WAIT_FOR_MISSING": "false", "WAIT_WINDOW_MS": "10"})
    assert (env["WAIT_FOR_MISSING"], env["WAIT_WINDOW_MS"], env["API_KEYS"]) == ("false", "10", "k")
