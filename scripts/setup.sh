#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch pinned to the build on this machine's disk
# (other torch versions download gigabytes) and the package installed editable with its dev extras.
# Quick when everything is already installed: a stamp file records the hash of what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.vlm_dpo_setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# --no-compile: no byte-compiling of every installed file (torch's alone is ~20 s of a fresh set-up); Python
# compiles what is imported, on first import.
"$VENV/bin/python" -m pip install -q --no-compile --upgrade pip
"$VENV/bin/python" -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q --no-compile -e ".[dev]"
echo "$want" > "$stamp"
