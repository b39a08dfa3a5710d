#!/usr/bin/env bash
# The GPU path in one run on a CUDA host: prints one table (see bench/gpu_check.py for the checks).
# On a host without the project's packages (a bare CUDA image), wheels in .gpu/whl are installed to /tmp/site first
# and SmolLM2's tokenizer files may sit in .gpu/tokenizer.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
tokenizer=()
[ -f .gpu/tokenizer/tokenizer.json ] && tokenizer=(--tokenizer .gpu/tokenizer)
PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py "${tokenizer[@]}" "$@"
