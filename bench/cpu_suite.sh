#!/usr/bin/env bash
# The Xeon CPU measurements of docs/performance.md in one device call, ~110M Llama shape, batch 4 x 512 per rank:
# the plain HF Trainer + PEFT recipe under plain mpirun (the issue's best rows), then the project through
# scripts/run_mpi_cpu.sh (the launcher users type: allocator, OpenMP runtime and pinning chosen there) with
# each lever flipped, and a ratio table against the best baseline row of this same call.
#   Usage: bash bench/cpu_suite.sh [levers|runtime|splits|compile|coldwarm|real|all]
# Optional: jemalloc / tcmalloc / Intel OpenMP carried beside the run: CPU_LIB_DIRS=dir1:dir2 (Debian .deb
# files unpacked with `dpkg -x`, or `pip install --target` of intel-openmp); .whl/ wheels are installed first.
set -uo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# Carried runtimes: .bench/debs/libjemalloc2*.deb, .bench/debs/libtcmalloc-minimal4*.deb (apt-get download) and
# .whl/intel_openmp-*.whl (pip download intel-openmp; its libiomp5.so is a data file of the wheel)
for deb in .bench/debs/*.deb; do [[ -e $deb ]] && dpkg -x "$deb" /tmp/cpu-libs; done
for wheel in .whl/intel_openmp-*.whl; do [[ -e $wheel ]] && python3 -m zipfile -e "$wheel" /tmp/cpu-libs/iomp; done
iomp_dir=$(dirname "$(ls /tmp/cpu-libs/iomp/*.data/data/lib/libiomp5.so 2>/dev/null | head -n 1)" 2>/dev/null)
export CPU_LIB_DIRS=${CPU_LIB_DIRS:-/tmp/cpu-libs/usr/lib/x86_64-linux-gnu:${iomp_dir:-/tmp/site/lib}}
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=""
out=${OUT:-.bench/out}; mkdir -p "$out"
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket"; grep -o -m1 amx_bf16 /proc/cpuinfo; date -u
py=$(command -v python3)
cores=$(lscpu -p=CORE | grep -v '^#' | sort -u | wc -l)
mpi=(mpirun --allow-run-as-root -x PYTHONPATH -x PYTHONUNBUFFERED -x TOKENIZERS_PARALLELISM -x CUDA_VISIBLE_DEVICES)
b=(bench/train_throughput.py --preset llama110m --device cpu --seq 512 --batch 4 --steps ${STEPS:-6} --warmup 2)
show() { grep -E "^(variant|baseline|project)|Error|error:|# " | grep -v '^{'; }
plain_run() {  # ranks, variants, json name: the issue's plain recipe, Open MPI pinning, MASTER_ADDR exported
  local ranks=$1 t=$((cores / $1)) variants=$2 name=$3; shift 3
  echo "== $variants: plain mpirun -n $ranks x $t threads $*"
  MASTER_ADDR=127.0.0.1 OMP_NUM_THREADS=$t "${mpi[@]}" -x MASTER_ADDR -x OMP_NUM_THREADS -n "$ranks" \
    --map-by "ppr:$ranks:node:PE=$t" --bind-to core $py "${b[@]}" --variants "$variants" \
    --json "$out/cpu_$name.json" "$@" 2>&1 | show
}
launcher_run() {  # ranks, variants, json name, then VAR=value settings for the launcher; RUN_TIMEOUT=seconds
  local ranks=$1 variants=$2 name=$3; shift 3
  echo "== $variants: scripts/run_mpi_cpu.sh -ppn $ranks $*"
  env "$@" PYTHON=$py timeout "${RUN_TIMEOUT:-0}" scripts/run_mpi_cpu.sh -ppn "$ranks" "${b[@]}" --variants "$variants" \
    --json "$out/cpu_$name.json" 2>&1 | show
  return "${PIPESTATUS[0]}"
}
what=${1:-all}
if [[ $what == levers || $what == all ]]; then
  plain_run 4 baseline baseline_4
  plain_run 8 baseline baseline_8
  launcher_run 4 project project_4
  for lever in ${CPU_LEVERS:-mathattn chunkce layercompile compile shared nofn nofuse}; do
    launcher_run 4 "project+$lever" "project_4_${lever//+/_}"
  done
fi
if [[ $what == runtime || $what == all ]]; then  # the launcher's runtime choices, one at a time
  launcher_run 4 project project_4_glibc CPU_ALLOCATOR=none
  launcher_run 4 project project_4_tcmalloc CPU_ALLOCATOR=tcmalloc
  launcher_run 4 project project_4_gomp CPU_OPENMP=gnu
  launcher_run 4 project project_4_plainrt CPU_ALLOCATOR=none CPU_OPENMP=gnu
fi
if [[ $what == splits || $what == all ]]; then
  launcher_run 8 project project_8
  launcher_run 2 project project_2
  launcher_run 1 project+b16 project_1_b16  # the 4 x 4 global batch in one rank
  launcher_run 2 project+b8 project_2_b8
fi
if [[ $what == compile || $what == all ]]; then  # compile modes at the default split
  launcher_run 4 project+layercompile+chunkce project_4_layercompile_chunkce
  launcher_run 8 project+layercompile project_8_layercompile
fi
if [[ $what == coldwarm || $what == all ]]; then
  # Whole-model --torch_compile with an empty inductor cache, then the same command with the cache it filled: how
  # long each command takes to return (compilation, and whether the ranks leave at exit), and what stays behind
  cache=$(mktemp -d)
  for pass in cold warm; do
    start=$(date +%s)
    TORCHINDUCTOR_CACHE_DIR=$cache RUN_TIMEOUT=${COMPILE_TIMEOUT:-300} launcher_run 4 project+compile "project_4_compile_$pass"
    status=$?
    echo "== $pass cache: the command returned after $(($(date +%s) - start)) s (exit $status; 124: timed out)"
    pgrep -fa "compile_worker|train_throughput" | grep -v pgrep || echo "   no process left behind"
  done
fi
if [[ $what == real || $what == all ]]; then
  echo "== real data, padded vs packed, 1 x $cores"
  OMP_NUM_THREADS=$cores $py "${b[@]}" --data real --data_dir .bench/data --layouts padded,packed --padded_batch 4 \
    --variants project --json "$out/cpu_real.json" 2>&1 | show
fi
echo "== ratios against the best plain-recipe row of this call"
python3 - "$out" <<'PY'
import json, pathlib, sys
rows = {p.stem[4:]: json.loads(p.read_text())[0] for p in sorted(pathlib.Path(sys.argv[1]).glob("cpu_*.json"))}
base = max((r["tokens_per_s"] for n, r in rows.items() if n.startswith("baseline")), default=None)
for name, r in rows.items():
    ratio = f"{r['tokens_per_s'] / base:5.2f}" if base else "  n/a"
    print(f"{name:36} {r['tokens_per_s']:8.0f} tokens/s  {ratio}x  first step {r['first_step_s']:6.1f} s  loss {r['first_loss']:.4f}")
PY
