#!/usr/bin/env bash
# Launch a fine-tuning script with torchrun: one rank per GPU (or XPU) of this node, else one process.
#
#   scripts/run_torchrun.sh finetune_clm.py ...                                   # every GPU of this node
#   scripts/run_torchrun.sh -n 2 finetune_clm.py --no_cuda ...                    # 2 CPU ranks
#   scripts/run_torchrun.sh --nnodes 2 --node_rank 0 --master_addr node01 finetune_clm.py ...   # per node
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [-n NPROC_PER_NODE] [--nnodes N --node_rank R --master_addr HOST]" \
        "[--master_port PORT] [--dry-run] SCRIPT.py [SCRIPT ARGS...]" >&2
    echo "Runs \$PYTHON (default python3) -m torch.distributed.run (torchrun) with SCRIPT.py." >&2
}

python="${PYTHON:-python3}"
per_node="" nnodes=1 node_rank=0 master_addr="${MASTER_ADDR:-}" master_port="${MASTER_PORT:-29500}" dry_run=0
while (($#)); do
    case "$1" in
        -n | --nproc_per_node | --nproc-per-node) per_node="${2:?-n needs a value}"; shift 2 ;;
        --nnodes) nnodes="${2:?--nnodes needs a value}"; shift 2 ;;
        --node_rank | --node-rank) node_rank="${2:?--node_rank needs a value}"; shift 2 ;;
        --master_addr | --master-addr) master_addr="${2:?--master_addr needs a value}"; shift 2 ;;
        --master_port | --master-port) master_port="${2:?--master_port needs a value}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "unknown option: $1" >&2; usage; exit 2 ;;
        *) break ;;
    esac
done
if (($# == 0)); then usage; exit 2; fi

if [[ -z "$per_node" ]]; then
    # One rank per accelerator torch can see; a CPU-only node runs one process (pass -n for CPU ranks).
    per_node=$("$python" -c 'import torch
n = torch.cuda.device_count() or (torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0)
print(max(n, 1))' 2>/dev/null || echo 1)
fi
if ! [[ "$per_node" =~ ^[0-9]+$ && "$per_node" -ge 1 ]]; then
    echo "error: -n must be a positive integer, got '$per_node'" >&2
    exit 2
fi
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    # torchrun would set 1 thread per rank; give each rank its share of the cores instead.
    share=$(($(nproc) / per_node))
    export OMP_NUM_THREADS=$((share > 0 ? share : 1))
fi

cmd=("$python" -m torch.distributed.run --nproc_per_node "$per_node")
if ((nnodes == 1)); then
    cmd+=(--standalone)  # picks a free port itself, so two single-node jobs on one host do not collide
else
    if [[ -z "$master_addr" ]]; then
        echo "error: --nnodes $nnodes needs --master_addr (the host of node rank 0)" >&2
        exit 2
    fi
    cmd+=(--nnodes "$nnodes" --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port")
fi
cmd+=("$@")

echo "# torchrun: $per_node rank(s) per node on $nnodes node(s), $OMP_NUM_THREADS OpenMP threads each" >&2
printf '+' >&2
printf ' %q' "${cmd[@]}" >&2
printf '\n' >&2
if ((dry_run)); then exit 0; fi
exec "${cmd[@]}"
