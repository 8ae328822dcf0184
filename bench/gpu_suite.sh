#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one device call (the lent machine has no `datasets`,
# `liger-kernel`, or this project's transformers/peft pins: they travel as wheels in .whl/, and the shared
# data in .bench/data/). Usage on the device machine:  bash bench/gpu_suite.sh [fixed|real|all]
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-.bench/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
what=${1:-all}
if [[ $what == fixed || $what == all ]]; then
  python3 bench/train_throughput.py --preset llama7b --device cuda --seq 2048 --batch 4 --steps 10 --warmup 3 \
    --variants "${FIXED_VARIANTS:-baseline,project,project+nofuse,project+plain+liger,project+dropout05,project+ckpt}" \
    --json "$out/fixed.json" 2>&1 | grep -vE "Warning|warn\(" | tee "$out/fixed.log"
fi
if [[ $what == real || $what == all ]]; then
  python3 bench/train_throughput.py --preset llama7b --device cuda --seq 2048 --batch 4 --padded_batch 8 \
    --steps 10 --warmup 3 --data real --data_dir .bench/data --layouts padmax,padded,naive,packed \
    --variants "${REAL_VARIANTS:-project,project+noflex,project+noflex+noguard}" \
    --json "$out/real.json" 2>&1 | grep -vE "Warning|warn\(" | tee "$out/real.log"
fi
