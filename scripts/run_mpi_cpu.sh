#!/usr/bin/env bash
# Launch a fine-tuning script with mpirun on Xeon (CPU) nodes: one data-parallel job, each rank pinned to its
# share of the cores. Default: one rank per socket on each node.
#
#   scripts/run_mpi_cpu.sh -n 2 finetune_clm.py --no_cuda ...                          # one node, 2 sockets
#   scripts/run_mpi_cpu.sh -f hostfiles/mpich_hostfile -n 16 -ppn 4 finetune_clm.py --no_cuda ...
#   MPIRUN=/opt/intel/oneapi/mpi/latest/bin/mpirun scripts/run_mpi_cpu.sh --dry-run -n 4 finetune_clm.py ...
#
# Works with Intel MPI, MPICH and Open MPI (detected from `mpirun --version`). The script itself maps MPI's
# variables (finetuning/distributed.py); this wrapper only sizes and pins the ranks.
set -euo pipefail

USAGE="Runs \$PYTHON (default python3) SCRIPT.py under \$MPIRUN (default mpirun) with oneCCL and OpenMP set up for CPUs."
source "$(dirname "${BASH_SOURCE[0]}")/_mpi_launch.sh"

DEFAULT_PPN=$(cpu_sockets)
# One oneCCL worker thread per rank: more would steal the cores OpenMP is pinned to (ignored without ccl).
export CCL_WORKER_COUNT="${CCL_WORKER_COUNT:-1}"
FORWARD_VARS=(OMP_NUM_THREADS CCL_WORKER_COUNT CCL_ATL_TRANSPORT FI_PROVIDER MASTER_ADDR MASTER_PORT
    GLOO_SOCKET_IFNAME)

mpi_launch "$@"
