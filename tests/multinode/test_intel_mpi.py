"""The seed's Intel MPI line, run with Intel MPI's own mpirun (impi-rt from PyPI), on one host and on two.

``mpirun -f nodefile -n N -ppn M -genv OMP_NUM_THREADS=... python3 finetune_clm.py ...`` as the seed runs it,
with what Intel MPI needs here: its prefix on PATH and LD_LIBRARY_PATH (so mpi4py loads Intel's libmpi),
libfabric's providers (FI_PROVIDER_PATH) and the TCP provider (FI_PROVIDER=tcp), and a bootstrap that enters
the namespaced hosts instead of ssh (I_MPI_HYDRA_BOOTSTRAP=ssh with I_MPI_HYDRA_BOOTSTRAP_EXEC, or fork on one
host). Skipped where Intel MPI is not installed (``make impi``: 83 MB download, 166 MB installed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, launch_env
from launching import host_env, run_on
from netns_hosts import write_launcher
from runs import assert_one_job_like_one_process, lora_flags

pytestmark = [pytest.mark.multinode, pytest.mark.distributed, pytest.mark.slow]

IMPI = Path(os.environ.get("IMPI_PREFIX", REPO / ".impi"))


def intel_mpi_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    if not (IMPI / "bin" / "mpirun").exists():
        pytest.skip(f"Intel MPI is not installed in {IMPI} (make impi, or set IMPI_PREFIX)")
    lib = str(IMPI / "lib")
    return base | {
        "PATH": f"{IMPI / 'bin'}:{base['PATH']}",
        "I_MPI_ROOT": str(IMPI),
        "LD_LIBRARY_PATH": lib,
        "FI_PROVIDER_PATH": lib,
        "FI_PROVIDER": "tcp",
        "CCL_WORKER_COUNT": "1",
        **extra,
    }


def seed_line(nodefile: Path, ranks: int, per_node: int, flags: list[object]) -> list[object]:
    mpi = ["mpirun", "-f", nodefile, "-n", ranks, "-ppn", per_node, "-genv", "OMP_NUM_THREADS=1"]
    return [*mpi, sys.executable, REPO / "finetune_clm.py", *flags, "--no_cuda"]


def references(one_process, tiny_model, train_file) -> tuple[Path, Path]:
    return tuple(one_process("finetune_clm.py", *lora_flags(tiny_model("llama"), train_file, b)) for b in (1, 4))


def test_one_host(tiny_model, train_file, one_process, tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n")
    env = intel_mpi_env(launch_env(), I_MPI_HYDRA_BOOTSTRAP="fork")
    output = tmp_path / "out"
    command = seed_line(nodefile, 2, 2, [*lora_flags(tiny_model("llama"), train_file, 2), "--output_dir", output])
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "Intel(R) MPI" in subprocess.run(["mpirun", "--version"], capture_output=True, text=True, env=env).stdout
    one_batch1, one_batch4 = references(one_process, tiny_model, train_file)
    assert_one_job_like_one_process(output, one_batch1, one_batch4, log)


def test_two_hosts(two_hosts, tiny_model, train_file, one_process, tmp_path):
    node0 = two_hosts[0]
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"{host.name}\n" for host in two_hosts))
    bootstrap = write_launcher(tmp_path / "enter_host", two_hosts)
    env = intel_mpi_env(host_env(MASTER_ADDR=node0.address), I_MPI_HYDRA_BOOTSTRAP="ssh")
    env["I_MPI_HYDRA_BOOTSTRAP_EXEC"] = str(bootstrap)
    output = tmp_path / "out"
    command = seed_line(nodefile, 4, 2, [*lora_flags(tiny_model("llama"), train_file, 1), "--output_dir", output])
    result = run_on(node0, command, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert_one_job_like_one_process(output, *references(one_process, tiny_model, train_file), log)
