#!/usr/bin/env bash
# Create .venv and install cmml with its pinned dependencies (idempotent; CPU-only torch).
# torch is installed first, pinned, so nothing can pull the multi-GB CUDA build.
# `setup.sh test` also installs the test extra and Debian's chromium and chromium-driver when missing (the browser test's
# headless Chromium; apt-get as root, else through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA=""  # the main job needs no extra; the test extra adds pytest, selenium and the cluster plugins
case "${1:-}" in
    "") ;;
    test)
        EXTRA="[test]"
        if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
            SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
            $SUDO apt-get update -qq
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
        fi ;;
    *) echo "usage: $0 [test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".$EXTRA"
.venv/bin/python -c "import torch, transformers, snakemake, dvc, cmml; print('cmml', cmml.__version__, '| torch', torch.__version__)"
