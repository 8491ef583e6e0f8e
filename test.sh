#!/usr/bin/env bash
# Set up everything (idempotent, plus the test browser) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh --test
# Two workers (pytest-xdist), one test file per worker at a time (module fixtures are built once);
# the 25 slowest tests are listed, to keep the suite under 15 minutes.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
