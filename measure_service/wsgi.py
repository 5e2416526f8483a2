"""The WSGI entry point for gunicorn: ``measure_service.wsgi:app``, configured from the env."""

from measure_service.app import create_app

app = create_app()
