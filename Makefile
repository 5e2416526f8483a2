# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What running needs: the service and its dependencies (demo: devtools/ runs from the checkout).
RUNTIME_STAMP := $(VENV)/.runtime

PORT           ?= 3000
SIMULATOR_PORT ?= 8081
DEMO_API_KEY   ?= demo-key

.PHONY: help venv test lint typecheck unit demo demo-shared run bench bench-service fuzz soak clean
.PHONY: image-test dashboard-test

help:
	@echo "make demo   - install, then run the service against the bundled Scope3 simulator"
	@echo "make demo-shared - two instances of 2 workers sharing a local Redis, and the simulator"
	@echo "make test   - install, then run lint, type checks and the whole test suite"
	@echo "make run    - serve real traffic (needs SCOPE3_API_TOKEN and API_KEYS)"
	@echo "make bench  - library benchmarks: hit ratios, throughput, memory (a few minutes)"
	@echo "              make bench CHARTS=1 also redraws bench/charts/*.png (more sizes: longer)"
	@echo "make bench-service - service benchmarks: load vs a Flask floor, upstream economy, deploys, tenants"
	@echo "make fuzz   - large fuzz run (hypothesis + schemathesis); make soak - 10-minute soak"
	@echo "make image-test     - build the Dockerfile with podman, run and check the image (root)"
	@echo "make dashboard-test - a real Prometheus answers every Grafana panel query; alert rules"

$(RUNTIME_STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check weighted_cache measure_service devtools tests bench deploy gunicorn.conf.py

typecheck: $(STAMP)
	$(BIN)/mypy weighted_cache
	$(BIN)/mypy measure_service devtools
	$(BIN)/mypy --strict deploy/checks

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

demo: $(RUNTIME_STAMP)
	@PORT=$(PORT) SIMULATOR_PORT=$(SIMULATOR_PORT) DEMO_API_KEY=$(DEMO_API_KEY) \
		$(BIN)/python -m devtools.demo

demo-shared: $(RUNTIME_STAMP)
	@PORT=$(PORT) SIMULATOR_PORT=$(SIMULATOR_PORT) DEMO_API_KEY=$(DEMO_API_KEY) \
		$(BIN)/python -m devtools.demo_shared

run: $(RUNTIME_STAMP)
	@test -n "$$SCOPE3_API_TOKEN" || { echo "make run: set SCOPE3_API_TOKEN"; exit 2; }
	@test -n "$$API_KEYS" || { echo "make run: set API_KEYS (comma-separated client keys)"; exit 2; }
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py measure_service.wsgi:app

# CHARTS=1: replay more capacities per trace and draw the charts into bench/charts.
CHARTS ?=
PLOT = $(if $(CHARTS),--plot bench/charts)

bench: $(STAMP)
	$(BIN)/python bench/hit_ratio.py $(PLOT)
	$(BIN)/python bench/throughput.py $(PLOT)
	$(BIN)/python bench/memory.py

bench-service: $(STAMP)
	$(BIN)/python bench/service_load.py
	$(BIN)/python bench/upstream_economy.py
	$(BIN)/python bench/deploys.py
	$(BIN)/python bench/tenants.py

# The deploy artefacts run for real; each prints one line saying why when it cannot run here.
image-test: $(STAMP)
	$(BIN)/python deploy/checks/image_test.py

dashboard-test: $(STAMP)
	$(BIN)/python deploy/checks/dashboard_test.py

fuzz: $(STAMP)
	bash bench/fuzz.sh

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
