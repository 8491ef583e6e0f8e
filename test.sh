#!/usr/bin/env bash
# Set up everything (idempotent, plus the test browser) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q --durations=25 "$@"  # the slowest tests, to keep the suite under 15 minutes
