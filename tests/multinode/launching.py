"""Launch the suite's scripts on the namespaced hosts: per node with torchrun, or from node0 with mpirun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, launch_env
from netns_hosts import Host, write_launcher

MASTER_PORT = 29500  # the hosts are this test's own: the default port cannot collide with another job
BIN = Path(sys.executable).parent


def host_env(**extra: str) -> dict[str, str]:
    """The scripts' environment without any launcher's variables (MASTER_PORT included), plus ``extra``."""
    return {name: value for name, value in launch_env().items() if name != "MASTER_PORT"} | extra


def run_on(host: Host, argv: list[object], env: dict[str, str] | None = None, timeout: float = 300):
    """Run ``argv`` inside ``host`` to its end, from the repo root (output captured)."""
    command = host.command([str(arg) for arg in argv])
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env or host_env(), cwd=REPO)


def start_on(host: Host, argv: list[object], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` inside ``host`` in the background, stdout and stderr to ``log``."""
    with log.open("w") as out:
        command = host.command([str(arg) for arg in argv])
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or host_env(), cwd=REPO)


def torchrun(
    node_rank: int,
    master: Host,
    script: str,
    flags: list[object],
    *,
    nproc: int = 2,
    module: str = "torch.distributed.run",
    launcher_flags: list[object] | None = None,
) -> list[object]:
    """The per-node command of a two-node torchrun (or ``torch.distributed.launch``) job."""
    launcher = [sys.executable, "-m", module, "--nnodes", 2, "--node_rank", node_rank, "--nproc_per_node", nproc]
    rendezvous = ["--master_addr", master.address, "--master_port", MASTER_PORT, *(launcher_flags or [])]
    return [*launcher, *rendezvous, REPO / script, *flags]


def mpirun(
    hosts: tuple[Host, ...], directory: Path, script: str, flags: list[object], *, mpirun_path: Path | None = None
) -> list[object]:
    """MPICH's ``mpirun -f hostfile -n 4 -ppn 2`` over ``hosts``, entering them instead of ssh-ing (run it on node0)."""
    hostfile = directory / "hostfile"
    hostfile.write_text("".join(f"{host.name}\n" for host in hosts))
    launcher = write_launcher(directory / "enter_host", hosts)
    ranks = ["-f", hostfile, "-n", 2 * len(hosts), "-ppn", 2]
    mpi = [mpirun_path or BIN / "mpirun", "-launcher", "ssh", "-launcher-exec", launcher, *ranks]
    return [*mpi, sys.executable, REPO / script, *flags]
