#!/usr/bin/env bash
# Launch a fine-tuning script with mpirun on Intel GPU (XPU) nodes: one rank per XPU, each rank takes the XPU
# of its local rank (finetuning/launch/environment.py) and reduces over xccl (torch >= 2.8) or oneCCL's ccl.
#
#   scripts/run_mpi_xpu.sh finetune_clm.py ...                                   # every XPU of this node
#   scripts/run_mpi_xpu.sh -f hostfiles/mpich_hostfile -ppn 8 finetune_clm.py ...
#
# Defaults below are overridden by variables already exported (e.g. FI_PROVIDER=cxi on Slingshot).
set -euo pipefail

USAGE="Runs \$PYTHON (default python3) SCRIPT.py under \$MPIRUN (default mpirun), one rank per XPU per node."
source "$(dirname "${BASH_SOURCE[0]}")/_mpi_launch.sh"

# -ppn defaults to the XPUs torch sees on this node (nodes are assumed alike).
DEFAULT_PPN=$("${PYTHON:-python3}" -c 'import torch; print(torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0)' 2>/dev/null || echo 0)
PPN_HINT="torch sees no XPU on this node; pass -ppn N (XPUs per node) or use scripts/run_mpi_cpu.sh"
# oneCCL exchanges GPU memory handles between ranks over sockets: the default (pidfd) needs kernel >= 5.6
# and ptrace rights that containers often withhold.
export CCL_ZE_IPC_EXCHANGE="${CCL_ZE_IPC_EXCHANGE:-sockets}"
# libfabric provider between nodes: tcp works everywhere; set cxi (Slingshot), psm3 or verbs for speed.
export FI_PROVIDER="${FI_PROVIDER:-tcp}"
export CCL_WORKER_COUNT="${CCL_WORKER_COUNT:-1}"
FORWARD_VARS=(OMP_NUM_THREADS CCL_WORKER_COUNT CCL_ZE_IPC_EXCHANGE CCL_ATL_TRANSPORT FI_PROVIDER MASTER_ADDR
    MASTER_PORT ZE_FLAT_DEVICE_HIERARCHY ZE_AFFINITY_MASK)

mpi_launch "$@"
