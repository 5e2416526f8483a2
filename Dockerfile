# syntax=docker/dockerfile:1
# Any Debian-based image with python3.11 (as `python`), venv and apt will do; make image-test builds
# one from Debian packages where the public image cannot be pulled.
ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: compile wheels (gevent needs a compiler on some platforms) into a venv we copy whole.
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg setup.py README.md ./
COPY weighted_cache ./weighted_cache
COPY measure_service ./measure_service
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir .

# Runtime stage: no compiler, no sources beyond the installed package, and a non-root user.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=3000
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./
RUN useradd --system --uid 10001 --home-dir /app app
USER app
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ.get('PORT', '3000'), timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "measure_service.wsgi:app"]
