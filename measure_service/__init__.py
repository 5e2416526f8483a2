"""A caching proxy for Scope3's POST /v2/measure API, run by gunicorn with gevent workers."""
