#!/usr/bin/env bash
# Create .venv and install autoprune with its dev extra. The pinned CPU build of torch goes in
# first so nothing resolves an unpinned torch (which would pull GBs of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
