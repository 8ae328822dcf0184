#!/usr/bin/env bash
# The Xeon CPU measurements of docs/performance.md in one device call: the plain-recipe rows and the
# project's CPU path on a ~110M Llama-shaped model (batch 4 x 512 per rank), then real data padded vs packed.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=""
out=${OUT:-.bench/out}; mkdir -p "$out"
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket|Flags" | sed 's/Flags:.*\(amx_bf16\).*/AMX: \1/'
py=$(command -v python3)
cores=$(nproc)
mpi=(mpirun --allow-run-as-root -x PYTHONPATH -x PYTHONUNBUFFERED -x TOKENIZERS_PARALLELISM -x CUDA_VISIBLE_DEVICES)
b=(bench/train_throughput.py --preset llama110m --device cpu --seq 512 --batch 4 --steps 5 --warmup 2)
show() { grep -E "^(variant|baseline|project)|Error"; }
echo "== fp32, 1 x $cores";  OMP_NUM_THREADS=$cores $py "${b[@]}" --precision fp32 --variants baseline --json "$out/cpu_fp32.json" 2>&1 | show
echo "== bf16, 1 x $cores";  OMP_NUM_THREADS=$cores $py "${b[@]}" --variants "${CPU_VARIANTS:-baseline,project,project+dropout0}" \
                               --json "$out/cpu_bf16.json" 2>&1 | show
for ranks in ${CPU_RANKS:-2 4}; do
  t=$((cores / ranks))
  for variant in baseline project+dropout0; do
    echo "== bf16 $variant, mpirun -n $ranks x $t"
    OMP_NUM_THREADS=$t "${mpi[@]}" -x OMP_NUM_THREADS -n "$ranks" --map-by "ppr:$ranks:node:PE=$t" --bind-to core \
      $py "${b[@]}" --variants $variant --json "$out/cpu_${variant}_${ranks}.json" 2>&1 | show
  done
done
echo "== real data, padded vs packed, 1 x $cores"
OMP_NUM_THREADS=$cores $py "${b[@]}" --data real --data_dir .bench/data --layouts padded,packed --padded_batch 4 \
  --variants project+dropout0 --json "$out/cpu_real.json" 2>&1 | show
