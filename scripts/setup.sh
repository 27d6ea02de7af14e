#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch pinned to the build on this machine's disk
# (other torch versions download gigabytes) and the package installed editable, with its dev extras (tests,
# notebooks) unless VLM_DPO_EXTRAS says otherwise: the demo sets it empty, as it needs none of them.
# Quick when everything is already installed: a stamp file per extras records the hash of what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${VLM_DPO_EXTRAS-dev}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
stamp() { echo "$VENV/.vlm_dpo_setup.${1:-runtime}"; }
for have in "$EXTRAS" dev; do  # a dev install holds everything the runtime one does
  if [ -f "$(stamp "$have")" ] && [ "$(cat "$(stamp "$have")")" = "$want" ]; then
    exit 0
  fi
done
# --no-compile: no byte-compiling of every installed file (torch's alone is ~20 s of a fresh set-up); Python
# compiles what is imported, on first import. One pip command resolves the dependencies once (~6 s less than
# torch first, then the package).
"$VENV/bin/python" -m pip install -q --no-compile --upgrade pip
"$VENV/bin/python" -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1 -e ".${EXTRAS:+[$EXTRAS]}"
echo "$want" > "$(stamp "$EXTRAS")"
