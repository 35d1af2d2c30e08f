#!/usr/bin/env bash
# Create .venv and install cmml with its pinned dependencies (idempotent; CPU-only torch).
# torch is installed first, pinned, so nothing can pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, transformers, snakemake, dvc, cmml; print('cmml', cmml.__version__, '| torch', torch.__version__)"
