#!/usr/bin/env bash
# Data-parallel scaling on a lent 2-GPU machine (docs/performance.md): the project's training path on a
# ~1B Llama-shaped model, 1 GPU vs `mpirun -n 2` vs `torchrun --nproc_per_node 2` (NCCL), then the host's CPUs
# with 1, 2 and 4 ranks under mpirun, threads split between the ranks.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false NCCL_NVLS_ENABLE=0
out=${OUT:-.bench/out}; mkdir -p "$out"
py=$(command -v python3)  # absolute: Open MPI puts its own bin/ first on the ranks' PATH
mpi=(mpirun --allow-run-as-root -x PYTHONPATH -x PYTHONUNBUFFERED -x TOKENIZERS_PARALLELISM -x NCCL_NVLS_ENABLE)
gpu=(bench/train_throughput.py --preset llama1b --device cuda --seq 2048 --batch 4 --steps 10 --warmup 3 --variants project)
echo "== 1 GPU";            CUDA_VISIBLE_DEVICES=0 $py "${gpu[@]}" --json "$out/gpu_1.json" 2>&1 | grep -E "^(variant|project)|Error|error"
echo "== mpirun -n 2";      "${mpi[@]}" -n 2 $py "${gpu[@]}" --json "$out/gpu_2_mpirun.json" 2>&1 | grep -E "^(variant|project)|Error|error"
echo "== torchrun 2";       $py -m torch.distributed.run --standalone --nproc_per_node 2 "${gpu[@]}" \
                              --json "$out/gpu_2_torchrun.json" 2>&1 | grep -E "^(variant|project)|Error|error"
cores=$(nproc)
cpu=(bench/train_throughput.py --preset llama110m --device cpu --seq 512 --batch 4 --steps 5 --warmup 2 --variants project)
for ranks in 1 2 4; do
  threads=$((cores / ranks))
  echo "== CPU: mpirun -n $ranks x $threads threads"
  OMP_NUM_THREADS=$threads "${mpi[@]}" -x OMP_NUM_THREADS -n $ranks --map-by "ppr:$ranks:node:PE=$threads" \
    --bind-to core $py "${cpu[@]}" --json "$out/cpu_${ranks}.json" 2>&1 | grep -E "^(variant|project)|Error|error"
done
