#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra args go to pytest, e.g. `bash scripts/test.sh -k judge`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
