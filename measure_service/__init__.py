"""A caching proxy for Scope3's POST /v2/measure API, served by Flask under gunicorn gevent workers."""
