#!/usr/bin/env bash
# Create .venv-modelopt: autoprune plus NVIDIA ModelOpt, for the FastNAS row of the agents league
# (benchmarks/agents.py --fastnas). Kept apart from .venv: ModelOpt is a peer we measure, never
# a dependency. The pinned CPU torch goes in first, as in setup.sh; torchprofile (FastNAS's FLOP
# counter) is installed without its torchvision dependency, which does not run with this torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-modelopt/bin/python ]; then
  "$PYTHON" -m venv .venv-modelopt
fi
PIP=(.venv-modelopt/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[dev]'
"${PIP[@]}" nvidia-modelopt==0.47.0
"${PIP[@]}" --no-deps torchprofile==0.0.4
