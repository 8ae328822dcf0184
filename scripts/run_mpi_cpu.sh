#!/usr/bin/env bash
# Launch a fine-tuning script with mpirun on Xeon (CPU) nodes: one data-parallel job, each rank pinned to its
# share of the cores. Default: a rank per 4 physical cores (at least one per socket), the split that trained
# fastest on a 16-core Sapphire Rapids (4 x 4: 3,346 tokens/s; 2 x 8: 2,829; 1 x 16: 2,493, docs/performance.md).
# CORES_PER_RANK=N changes the 4; -ppn and -t set the split outright.
#
#   scripts/run_mpi_cpu.sh finetune_clm.py --no_cuda --bf16 true ...                    # one node, cores/4 ranks
#   scripts/run_mpi_cpu.sh -f hostfiles/mpich_hostfile -n 16 -ppn 4 finetune_clm.py --no_cuda ...
#   MPIRUN=/opt/intel/oneapi/mpi/latest/bin/mpirun scripts/run_mpi_cpu.sh --dry-run -n 4 finetune_clm.py ...
#
# Works with Intel MPI, MPICH and Open MPI (detected from `mpirun --version`). The script itself maps MPI's
# variables (finetuning/launch/environment.py); this wrapper sizes and pins the ranks and sets up each rank's
# runtime (every choice is printed, and --dry-run prints it without starting anything):
#   CPU_ALLOCATOR=auto|jemalloc|tcmalloc|none|/path/lib.so  preloaded into every rank (auto: tcmalloc, else
#       jemalloc, else glibc's); CPU_LIB_DIRS=dir1:dir2 is searched first (e.g. where the Debian packages
#       libtcmalloc-minimal4 / libjemalloc2 were unpacked), then the Python environment's lib/ and the system's.
#   CPU_OPENMP=auto|intel|gnu  auto and gnu: GNU OpenMP with OMP_PROC_BIND=close OMP_PLACES=cores, one thread per
#       physical core of the rank's own cores, never a hyper-thread sibling; intel: Intel's OpenMP (libiomp5.so,
#       pip intel-openmp) preloaded with KMP_AFFINITY and KMP_BLOCKTIME.
set -euo pipefail

USAGE="Runs \$PYTHON (default python3) SCRIPT.py under \$MPIRUN (default mpirun) with oneCCL and OpenMP set up for CPUs."
source "$(dirname "${BASH_SOURCE[0]}")/_mpi_launch.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_cpu_runtime.sh"

CORES_PER_RANK="${CORES_PER_RANK:-4}"
if ! [[ "$CORES_PER_RANK" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: CORES_PER_RANK must be a positive integer, got '$CORES_PER_RANK'" >&2
    exit 2
fi
DEFAULT_PPN=$(($(physical_cores) / CORES_PER_RANK))
if ((DEFAULT_PPN < $(cpu_sockets))); then DEFAULT_PPN=$(cpu_sockets); fi
# One oneCCL worker thread per rank: more would steal the cores OpenMP is pinned to (ignored without ccl).
export CCL_WORKER_COUNT="${CCL_WORKER_COUNT:-1}"
FORWARD_VARS=(OMP_NUM_THREADS CCL_WORKER_COUNT CCL_ATL_TRANSPORT FI_PROVIDER MASTER_ADDR MASTER_PORT
    GLOO_SOCKET_IFNAME)
cpu_runtime_setup  # LD_PRELOAD, MALLOC_CONF, KMP_* / OMP_PROC_BIND: set here, forwarded to the ranks only
FORWARD_VARS+=(LD_PRELOAD MALLOC_CONF KMP_AFFINITY KMP_BLOCKTIME OMP_PROC_BIND OMP_PLACES)

mpi_launch "$@"
