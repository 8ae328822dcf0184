"""Check that the ranks of a launch form one job: an all-reduce must be exact, then report its bandwidth.

Run it the way the fine-tuning scripts are run, before spending hours on a job whose ranks never met::

    mpirun -n 2 python scripts/collectives_smoke.py                    # MPICH / Intel MPI / Open MPI
    torchrun --nproc_per_node 2 scripts/collectives_smoke.py --backend gloo
    scripts/run_mpi_cpu.sh -n 4 -ppn 2 -f hostfiles/mpich_hostfile scripts/collectives_smoke.py

Every rank prints one line (its ranks, host and rendezvous address); rank 0 adds the bandwidth. The exit
code is 1 when any rank got a wrong sum.
Bus bandwidth applies the ring all-reduce factor 2 (n - 1) / n, as nccl-tests do, so rank counts compare.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, not only the repo root

from finetuning.errors import exit_on_user_error
from finetuning.launch.backends import init_process_group, resolve_ddp_backend, set_local_device
from finetuning.launch.environment import setup_launch_environment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="gloo, nccl, xccl, ccl or mpi (default: by device)")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even when GPUs/XPUs are visible")
    parser.add_argument("--size_mb", type=float, default=16.0, help="all-reduce message size for bandwidth")
    parser.add_argument("--iters", type=int, default=10, help="timed all-reduces")
    parser.add_argument("--warmup", type=int, default=2, help="untimed all-reduces that set up connections")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    launch = setup_launch_environment()
    device = set_local_device(launch, use_cpu=args.cpu)
    backend = resolve_ddp_backend(args.backend, device, world_size=launch.world_size)
    prefix = f"rank={launch.rank} world_size={launch.world_size} local_rank={launch.local_rank}"
    prefix += f" launcher={launch.launcher} backend={backend} device={device}"
    if not launch.is_distributed:
        _say(f"{prefix} allreduce=skipped (single process)")
        return 0

    import torch
    import torch.distributed as dist

    init_process_group(launch, backend, timeout_s=120)
    try:
        correct = _allreduce_is_exact(launch.rank, launch.world_size, device)
        # Every rank must learn whether any rank failed, or a wrong rank could exit 0 beside a correct one.
        flags = torch.tensor([int(correct)], dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        # Where this rank runs and met the others: what tells a host that joined from one that did not.
        where = f"host={socket.gethostname()} rendezvous={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        _say(f"{prefix} allreduce={'ok' if correct else 'WRONG'} {where}")
        seconds = _time_allreduce(device, args.size_mb, args.iters, args.warmup)
        if launch.is_main_process:
            size = int(args.size_mb * 2**20) // 4 * 4
            algbw = size / seconds / 1e9
            busbw = algbw * 2 * (launch.world_size - 1) / launch.world_size
            _say(
                f"allreduce {size / 2**20:.1f} MiB x{args.iters} over {backend}: {seconds * 1e3:.2f} ms, "
                f"algbw {algbw:.3f} GB/s, busbw {busbw:.3f} GB/s"
            )
        return 0 if flags.item() == 1 else 1
    finally:
        dist.destroy_process_group()


def _say(line: str) -> None:
    """One write per line: the launcher merges all ranks' stdout, and print's separate newline write interleaves."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _allreduce_is_exact(rank: int, world_size: int, device: str) -> bool:
    """Each rank sends (rank + 1) * arange; the sum, arange * n (n + 1) / 2, is exact in float32 here."""
    import torch
    import torch.distributed as dist

    base = torch.arange(1024, dtype=torch.float32, device=device)
    tensor = base * (rank + 1)
    dist.all_reduce(tensor)
    return torch.equal(tensor, base * (world_size * (world_size + 1) // 2))


def _time_allreduce(device: str, size_mb: float, iters: int, warmup: int) -> float:
    """Mean seconds per all-reduce, the slowest rank's, since a collective is as fast as its last arrival."""
    import torch
    import torch.distributed as dist

    buffer = torch.ones(max(1, int(size_mb * 2**20) // 4), dtype=torch.float32, device=device)
    for _ in range(warmup):
        dist.all_reduce(buffer)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buffer)
    _synchronize(device)
    mean = (time.perf_counter() - start) / max(1, iters)
    elapsed = torch.tensor([mean], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def _synchronize(device: str) -> None:
    """Wait for queued GPU/XPU work; CPU collectives already block."""
    import torch

    kind = device.split(":", 1)[0]
    if kind != "cpu":
        getattr(torch, kind).synchronize()


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
