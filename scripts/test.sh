#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra args go to pytest, e.g. `bash scripts/test.sh -k judge`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's chromium drives the browser tests (annotation page, report page); playwright downloads no browser.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "test.sh: chromium is missing; install it as root (apt-get install chromium) or the browser tests skip" >&2
  fi
fi
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
