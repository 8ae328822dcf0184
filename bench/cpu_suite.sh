#!/usr/bin/env bash
# The Xeon CPU measurements of docs/performance.md in one device call: the plain-recipe rows and the
# project's CPU path on a ~110M Llama-shaped model (batch 4 x 512 per rank), its levers one at a time, the
# ranks x threads splits, then real data padded vs packed.  Usage: bash bench/cpu_suite.sh [levers|splits|compile|real|all]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=""
out=${OUT:-.bench/out}; mkdir -p "$out"
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket" ; grep -o -m1 amx_bf16 /proc/cpuinfo
py=$(command -v python3)
cores=$(lscpu -p=CORE | grep -v '^#' | sort -u | wc -l)
mpi=(mpirun --allow-run-as-root -x PYTHONPATH -x PYTHONUNBUFFERED -x TOKENIZERS_PARALLELISM -x CUDA_VISIBLE_DEVICES)
b=(bench/train_throughput.py --preset llama110m --device cpu --seq 512 --batch 4 --steps 6 --warmup 2)
show() { grep -E "^(variant|baseline|project)|Error" | grep -v '^{'; }
ranks_run() {  # ranks, variants, json name, extra flags
  local ranks=$1 t=$((cores / $1)) variants=$2 name=$3; shift 3
  echo "== $variants: mpirun -n $ranks x $t threads $*"
  OMP_NUM_THREADS=$t "${mpi[@]}" -x OMP_NUM_THREADS -n "$ranks" --map-by "ppr:$ranks:node:PE=$t" --bind-to core \
    $py "${b[@]}" --variants "$variants" --json "$out/cpu_$name.json" "$@" 2>&1 | show
}
what=${1:-all}
if [[ $what == levers || $what == all ]]; then
  echo "== levers, 1 x $cores"
  OMP_NUM_THREADS=$cores $py "${b[@]}" --json "$out/cpu_levers.json" \
    --variants "${CPU_VARIANTS:-baseline,project,project+nofuse,project+plain+bf16w,project+dropout05,project+compile}" 2>&1 | show
fi
if [[ $what == splits || $what == all ]]; then
  for ranks in ${CPU_RANKS:-2 4 8}; do
    ranks_run "$ranks" baseline "baseline_$ranks"
    ranks_run "$ranks" project "project_$ranks"
  done
  ranks_run 1 project project_1_b16 --batch 16  # the 4 x 4 global batch in one rank
  ranks_run 2 project project_2_b8 --batch 8
fi
if [[ $what == compile || $what == all ]]; then  # the CPU recipe: torch.compile at the best split
  for ranks in ${CPU_COMPILE_RANKS:-4}; do ranks_run "$ranks" project+compile "project_compile_$ranks"; done
fi
if [[ $what == real || $what == all ]]; then
  echo "== real data, padded vs packed, 1 x $cores"
  OMP_NUM_THREADS=$cores $py "${b[@]}" --data real --data_dir .bench/data --layouts padded,packed --padded_batch 4 \
    --variants project --json "$out/cpu_real.json" 2>&1 | show
fi
