#!/usr/bin/env bash
# The large fuzz run of issue 6: the same tests as `make test`, with large example budgets.
#
#   bench/fuzz.sh [EXAMPLES_PER_FUZZ_TEST [EXAMPLES_PER_SCHEMATHESIS_MODE]]
#
# Defaults: 2500 examples for each of the 5 in-process hypothesis tests (12,500 bodies) and 1100
# per generation mode (positive, negative) for schemathesis against live gunicorn + the simulator
# (2,200 POST /v2/measure requests, plus the probes). Prints the figures that bench/FUZZ.md records.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_EXAMPLES=${1:-2500}
SCHEMATHESIS_EXAMPLES=${2:-1100}
PYTEST=${PYTEST:-.venv/bin/pytest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== hypothesis: $FUZZ_EXAMPLES examples per test, validation layer in process"
MEASURE_FUZZ_EXAMPLES=$FUZZ_EXAMPLES "$PYTEST" -q -p no:cacheprovider --timeout 1800 \
    --hypothesis-show-statistics tests/measure_service/test_fuzz_validation.py \
    | tee "$work/hypothesis.log"
bodies=$(grep -Eo '[0-9]+ passing' "$work/hypothesis.log" | awk '{s += $1} END {print s + 0}')
failing=$(grep -Eo '[0-9]+ failing' "$work/hypothesis.log" | awk '{s += $1} END {print s + 0}')

echo "== schemathesis: $SCHEMATHESIS_EXAMPLES examples per mode, live gunicorn + simulator"
MEASURE_SCHEMATHESIS_EXAMPLES=$SCHEMATHESIS_EXAMPLES MEASURE_FUZZ_REPORT="$work/schemathesis.jsonl" \
    "$PYTEST" -q -p no:cacheprovider --timeout 1800 tests/integration/test_schemathesis.py
requests=$("${PYTHON:-.venv/bin/python}" -c '
import json, sys
print(sum(json.loads(line)["requests"] for line in open(sys.argv[1])))' "$work/schemathesis.jsonl")

# pytest exits non-zero (and set -e stops here) on any 5xx, schema violation or exception.
echo
echo "hypothesis: $bodies generated bodies, $failing failing, 0 uncaught exceptions"
echo "schemathesis: $requests generated requests, 0 server errors, 0 schema violations"
