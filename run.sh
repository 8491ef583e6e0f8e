#!/usr/bin/env bash
# Set up everything (idempotent) and launch compress lab on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
echo "== compress lab: open http://${COMPRESS_LAB_ADDRESS:-127.0.0.1}:${COMPRESS_LAB_PORT:-8501}"
exec .venv/bin/streamlit run app.py --server.address "${COMPRESS_LAB_ADDRESS:-127.0.0.1}" \
  --server.port "${COMPRESS_LAB_PORT:-8501}" "$@"
