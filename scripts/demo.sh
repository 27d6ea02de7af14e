#!/usr/bin/env bash
# Set up (idempotent) and run the whole pipeline on the embedded default world. Extra args go to the command,
# e.g. `bash scripts/demo.sh --out runs/mine describe.n_samples=8`.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM_DPO_EXTRAS= bash scripts/setup.sh  # the runtime dependencies; test.sh adds the dev extras
# No OMP_WAIT_POLICY here: the pipeline's own process runs faster with OpenMP's default (brief spinning);
# its worker processes set PASSIVE themselves (vlm_dpo/parallel.py).
exec .venv/bin/vlm-dpo pipeline configs/demo.yaml "$@"
