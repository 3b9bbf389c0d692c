#!/usr/bin/env bash
# Create .venv (once) and install kexaone with its pinned dependencies. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.kexaone-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU build is installed from the local wheel; a bare `torch` would pull CUDA.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[test,data]"
  touch "$stamp"
fi
