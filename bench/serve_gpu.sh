#!/usr/bin/env bash
# bench/serve_bench.py on the lent GPU in one device call: a 1B-class random Llama (made once), 128-token
# prompts, 128 new tokens, 1/8/32 concurrent clients against one-by-one generation. The machine has no
# fastapi/uvicorn (nor this project's transformers/peft pins): they travel as wheels in .whl/ (docs/performance.md
# lists them). Usage on the device machine:  bash bench/serve_gpu.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-.bench/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, fastapi, uvicorn; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 bench/serve_bench.py --preset llama1b --device cuda --requests 128 --baseline_requests 8 \
  --json "$out/serve.json" 2>&1 | grep -vE "Warning|warn\(" | tee "$out/serve.log"
