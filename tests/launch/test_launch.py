"""Launch environment: every launcher becomes one data-parallel job, with the right backend and device.

Unit tests pass a dict as the environment and replace the availability probes (no CUDA, XPU or oneCCL here).
Tests marked ``distributed`` start real processes under mpirun (MPICH's Hydra from PyPI) and torchrun.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from finetuning.errors import UserError
from finetuning.launch import backends, environment
from finetuning.launch.backends import (
    device_for_local_rank,
    init_process_group,
    maybe_import_ipex,
    resolve_ddp_backend,
    set_local_device,
)
from finetuning.launch.environment import LaunchEnvironment, setup_launch_environment

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMOKE = REPO / "scripts" / "collectives_smoke.py"
TORCH_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def no_mpi4py(monkeypatch):
    """Unit tests never initialise MPI in the pytest process; tests that want mpi4py install a fake."""
    monkeypatch.setattr(environment, "_mpi_world", lambda world_size: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def clear_env(monkeypatch, *names: str) -> None:
    """Remove variables so that monkeypatch also removes whatever the code under test sets in their place."""
    for name in names:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


def mpi_env(flavour: str, rank: int, size: int, local_rank: int, local_size: int) -> dict[str, str]:
    names = environment.MPI_VARIABLES[flavour]
    return dict(zip(names, map(str, (rank, size, local_rank, local_size)), strict=True))


# --- variable mapping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["mpich", "openmpi", "mvapich"])
def test_each_mpi_flavour_maps_onto_torch_variables(flavour):
    env = mpi_env(flavour, rank=5, size=8, local_rank=1, local_size=4) | {"MASTER_ADDR": "node0"}

    launch = setup_launch_environment(env)

    assert launch == LaunchEnvironment(5, 8, 1, 4, flavour)
    assert [env[name] for name in TORCH_NAMES] == ["5", "8", "1", "4"]
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node0", "29500")
    assert launch.is_distributed and not launch.is_main_process


@pytest.mark.parametrize("flavour", ["mpich", "openmpi", "mvapich", "torchrun"])
def test_on_two_hosts_the_local_rank_is_the_rank_on_this_host_not_the_world_rank(flavour):
    """Rank 3 of 4 on 2 hosts of 2 is the second process of the second host: local rank 1, so it drives GPU 1.
    On one host (every real mpirun/torchrun test here) world rank == local rank, so only this tells them apart."""
    if flavour == "torchrun":
        env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    else:
        env = mpi_env(flavour, rank=3, size=4, local_rank=1, local_size=2)
    env["MASTER_ADDR"] = "node0"

    launch = setup_launch_environment(env)

    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (3, 4, 1, 2)
    assert (env["RANK"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "1", "2")
    assert env["OMP_NUM_THREADS"] == "4"  # 8 usable CPUs shared by the 2 ranks of this host, not by 4


class FakeNodeComm:
    """What mpi4py's COMM_WORLD.Split_type(COMM_TYPE_SHARED) returns: this host's ranks."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Split_type(self, kind):  # mpi4py's spelling
        return self

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def Free(self) -> None:
        pass


def test_a_local_rank_derived_through_mpi4py_is_the_rank_within_the_host(monkeypatch):
    fake = types.ModuleType("mpi4py")
    fake.MPI = types.SimpleNamespace(COMM_TYPE_SHARED=1)  # the one name read; the real import would start MPI
    monkeypatch.setitem(sys.modules, "mpi4py", fake)
    monkeypatch.setattr(environment, "_mpi_world", lambda world_size: FakeNodeComm(rank=1, size=2))
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MASTER_ADDR": "node0"}  # gforker/srun: no local variables

    assert setup_launch_environment(env) == LaunchEnvironment(3, 4, 1, 2, "mpich")
    assert env["LOCAL_RANK"] == "1"


def test_what_mpich_hydra_exports_is_enough_on_one_host():
    # Exactly what `.venv/bin/mpirun -n 2 env` shows for rank 1 (MPICH 5 Hydra from PyPI).
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "PMI_FD": "9"}
    env["PMI_HOSTNAME"] = "vm"

    launch = setup_launch_environment(env)

    assert launch == LaunchEnvironment(1, 2, 1, 2, "mpich")
    assert (env["RANK"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("1", "1", "127.0.0.1")


def test_torchrun_variables_win_over_mpi_ones():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    torchrun |= {"MASTER_ADDR": "node7", "MASTER_PORT": "1234", "OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x"}
    env = torchrun | mpi_env("mpich", rank=0, size=2, local_rank=0, local_size=2)

    launch = setup_launch_environment(env)

    assert launch == LaunchEnvironment(3, 4, 1, 2, "torchrun")
    assert {name: env[name] for name in torchrun} == torchrun


def test_a_second_call_changes_nothing_and_keeps_the_launcher_name():
    env = mpi_env("mvapich", rank=2, size=4, local_rank=0, local_size=2) | {"MASTER_ADDR": "node0"}
    first = setup_launch_environment(env)
    after_first = dict(env)

    assert setup_launch_environment(env) == first == LaunchEnvironment(2, 4, 0, 2, "mvapich")
    assert env == after_first


def test_torch_variables_set_by_hand_count_as_torchrun():
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert setup_launch_environment(env).launcher == "torchrun"


@pytest.mark.parametrize("env", [{}, {"PMI_RANK": "0", "PMI_SIZE": "1"}], ids=["plain", "mpirun -n 1"])
def test_a_single_process_gets_no_rank_variables(env):
    before = dict(env)

    launch = setup_launch_environment(env)

    assert not launch.is_distributed and launch.is_main_process
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (0, 1, 0, 1)
    assert env == before  # a LOCAL_RANK would make accelerate start a one-process group


def test_defaults_to_os_environ_and_tells_an_imported_torch_its_thread_count(monkeypatch):
    import torch

    clear_env(monkeypatch, *TORCH_NAMES, "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    for name, value in mpi_env("openmpi", rank=0, size=2, local_rank=0, local_size=2).items():
        monkeypatch.setenv(name, value)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # OpenMP read the variable at import

    setup_launch_environment()

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "2", "127.0.0.1")
    assert (os.environ["OMP_NUM_THREADS"], threads) == ("4", [4])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PMI_RANK": "one", "PMI_SIZE": "2"}, "PMI_RANK='one' is not an integer"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 is outside a world of size 4"),
        (mpi_env("mpich", 0, 4, 2, 2), "local rank 2 of 2"),
    ],
)
def test_impossible_numbers_are_user_errors(env, message):
    with pytest.raises(UserError, match=message):
        setup_launch_environment(env)


def test_missing_local_rank_without_mpi4py_is_a_user_error():
    # MPICH's gforker and srun's PMI export only PMI_RANK/PMI_SIZE; the local rank then needs mpi4py.
    with pytest.raises(UserError, match="LOCAL_RANK and LOCAL_WORLD_SIZE or install mpi4py"):
        setup_launch_environment({"PMI_RANK": "0", "PMI_SIZE": "2"})
    with pytest.raises(UserError, match="LOCAL_RANK and LOCAL_WORLD_SIZE or install mpi4py"):  # half of it
        setup_launch_environment({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0"})


# --- rendezvous address -----------------------------------------------------------------------------------


def test_master_addr_from_the_environment_is_kept():
    env = mpi_env("mpich", 0, 2, 0, 2) | {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "4000"}

    setup_launch_environment(env)

    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.2.3", "4000")


def test_multi_host_without_master_addr_or_mpi4py_is_a_user_error():
    env = mpi_env("mpich", rank=0, size=16, local_rank=0, local_size=4)

    with pytest.raises(UserError, match="MASTER_ADDR is not set and the 16 ranks span several hosts"):
        setup_launch_environment(env)


class FakeComm:
    """The two calls the rendezvous makes on mpi4py's COMM_WORLD; bcast returns what rank 0 sent."""

    def __init__(self, rank: int, root_value: str) -> None:
        self.rank, self.root_value, self.sent = rank, root_value, []

    def Get_rank(self) -> int:  # mpi4py's spelling
        return self.rank

    def bcast(self, value, root=0):
        self.sent.append(value)
        return self.root_value


@pytest.mark.parametrize("rank", [0, 5])
def test_multi_host_shares_rank_0s_address_through_mpi4py(monkeypatch, rank):
    comm = FakeComm(rank, root_value="10.0.0.7")
    monkeypatch.setattr(environment, "_mpi_world", lambda world_size: comm)
    monkeypatch.setattr(environment, "_routable_address", lambda: "10.0.0.7" if rank == 0 else "wrong")
    env = mpi_env("openmpi", rank=rank, size=8, local_rank=rank % 4, local_size=4)

    setup_launch_environment(env)

    assert env["MASTER_ADDR"] == "10.0.0.7"
    assert comm.sent == (["10.0.0.7"] if rank == 0 else [None])  # only rank 0 offers its address


def test_routable_address_skips_debian_loopback_alias(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node3")
    monkeypatch.setattr(socket, "gethostbyname_ex", lambda name: (name, [], ["127.0.1.1", "10.4.0.3"]))
    assert environment._routable_address() == "10.4.0.3"
    monkeypatch.setattr(socket, "gethostbyname_ex", lambda name: (name, [], ["127.0.1.1"]))
    assert environment._routable_address() == "node3"


# --- threads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "local_size", "expected"), [(8, 4, "2"), (8, 3, "2"), (2, 4, "1")])
def test_omp_threads_split_the_usable_cpus_between_local_ranks(monkeypatch, cpus, local_size, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    env = mpi_env("mpich", rank=0, size=local_size, local_rank=0, local_size=local_size)

    setup_launch_environment(env)

    assert env["OMP_NUM_THREADS"] == expected
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == expected  # compile workers: the rank's share too


def test_omp_threads_set_by_the_user_are_kept():
    env = mpi_env("mpich", 0, 4, 0, 4) | {"OMP_NUM_THREADS": "56"}
    setup_launch_environment(env)
    assert env["OMP_NUM_THREADS"] == "56"


# --- backends ---------------------------------------------------------------------------------------------


@pytest.fixture
def devices(monkeypatch):
    """Set which accelerators and backends 'exist': devices(cuda=True, nccl=True, xpu=..., xccl=..., ccl=...)."""
    import torch.distributed as dist

    clear_env(monkeypatch, "CCL_WORKER_COUNT")

    def configure(*, cuda=False, nccl=False, xpu=False, xccl=False, ccl=False):
        monkeypatch.setattr(backends, "_cuda_available", lambda: cuda)
        monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)
        monkeypatch.setattr(backends, "_xpu_available", lambda: xpu)
        monkeypatch.setattr(backends, "_xccl_available", lambda: xpu and xccl)
        monkeypatch.setattr(backends, "_ccl_available", lambda: ccl)

    configure()
    return configure


@pytest.mark.parametrize(
    ("available", "device", "expected"),
    [
        ({}, "cpu", "gloo"),
        ({"ccl": True}, "cpu", "ccl"),
        ({"cuda": True, "nccl": True}, "cuda", "nccl"),
        ({"cuda": True, "nccl": True}, "cuda:3", "nccl"),
        ({"xpu": True, "xccl": True, "ccl": True}, "xpu", "xccl"),
        ({"xpu": True, "ccl": True}, "xpu", "ccl"),
    ],
)
def test_default_backend_follows_the_device(devices, available, device, expected):
    devices(**available)
    assert resolve_ddp_backend(None, device, world_size=2) == expected


def test_ccl_backend_gets_one_worker_thread_unless_set(devices, monkeypatch):
    devices(ccl=True)
    resolve_ddp_backend(None, "cpu", world_size=2)
    assert os.environ["CCL_WORKER_COUNT"] == "1"
    monkeypatch.setenv("CCL_WORKER_COUNT", "4")
    resolve_ddp_backend("ccl", "cpu", world_size=2)
    assert os.environ["CCL_WORKER_COUNT"] == "4"


def test_gloo_backend_leaves_ccl_variables_alone(devices):
    resolve_ddp_backend(None, "cpu", world_size=2)
    assert "CCL_WORKER_COUNT" not in os.environ


@pytest.mark.parametrize(
    ("available", "requested", "device", "message"),
    [
        ({}, "ccl", "cpu", "backend 'ccl' is not available; it needs oneccl_bind_pt"),
        ({}, "nccl", "cuda", "backend 'nccl' is not available; it needs a CUDA build"),
        ({"cuda": True}, "nccl", "cuda", "it needs a CUDA build"),
        ({}, "nccl", "cpu", "backend 'nccl' cannot run on cpu; use one of: gloo, ccl, mpi"),
        ({"xpu": True}, "xccl", "xpu", "backend 'xccl' is not available"),
        ({}, "hccl", "cpu", "unknown backend 'hccl'"),
        ({"xpu": True}, None, "xpu", "no collective backend for XPU"),
        ({}, None, "mps", "no data-parallel backend known for device 'mps'"),
    ],
)
def test_unusable_backends_are_user_errors_naming_the_fix(devices, available, requested, device, message):
    devices(**available)
    with pytest.raises(UserError, match=message) as error:
        resolve_ddp_backend(requested, device, world_size=2)
    assert error.value.field == "ddp_backend" or requested is None


def test_explicit_backend_is_case_insensitive(devices):
    assert resolve_ddp_backend("GLOO", "cpu", world_size=4) == "gloo"


def test_single_process_needs_no_backend(devices, monkeypatch):
    assert resolve_ddp_backend("ccl", "cpu", world_size=1) is None  # not even checked
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_ddp_backend(None, "cpu") == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_ddp_backend(None, "cpu") is None


def test_real_ccl_probe_is_false_without_the_bindings():
    backends._ccl_available.cache_clear()
    assert backends._ccl_available() is False


# --- devices ----------------------------------------------------------------------------------------------


def test_device_for_local_rank(devices, monkeypatch):
    import torch

    assert device_for_local_rank(3) == "cpu"
    devices(cuda=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert device_for_local_rank(2) == "cuda:2"
    assert device_for_local_rank(5) == "cuda:1"  # modulo, as accelerate does
    assert device_for_local_rank(2, use_cpu=True) == "cpu"
    devices(xpu=True)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: 2)
    assert device_for_local_rank(1) == "xpu:1"


def test_set_local_device_makes_the_accelerator_current(devices, monkeypatch):
    import torch

    devices(cuda=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    env: dict[str, str] = {}

    assert set_local_device(LaunchEnvironment(9, 16, 1, 8, "mpich"), environ=env) == "cuda:1"
    assert chosen == ["cuda:1"] and env == {}


def test_set_local_device_on_a_cpu_host_tells_accelerate_to_stay_distributed(devices):
    env: dict[str, str] = {}
    assert set_local_device(LaunchEnvironment(1, 2, 1, 2, "mpich"), environ=env) == "cpu"
    assert env == {"ACCELERATE_USE_CPU": "true"}
    single: dict[str, str] = {}
    set_local_device(LaunchEnvironment(0, 1, 0, 1, "single"), environ=single)
    assert single == {}


def test_init_process_group_does_nothing_for_one_process():
    import torch.distributed as dist

    assert init_process_group(LaunchEnvironment(0, 1, 0, 1, "single"), "gloo") is False
    assert init_process_group(LaunchEnvironment(0, 2, 0, 2, "mpich"), None) is False
    assert not dist.is_initialized()


# --- Intel extension --------------------------------------------------------------------------------------


@pytest.fixture
def ipex(monkeypatch):
    """Pretend IPEX ``version`` is installed (None: not installed); returns the list of imports attempted."""
    import importlib.metadata

    import torch

    imported: list[str] = []
    maybe_import_ipex.cache_clear()
    monkeypatch.setattr(torch, "__version__", "2.8.0+cpu")

    def configure(version: str | None, *, import_error: bool = False) -> list[str]:
        def fake_version(name):
            if version is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return version

        def fake_import(name):
            imported.append(name)
            if import_error:
                raise ImportError("libintel-ext-pt-cpu.so: cannot open shared object file")
            return types.ModuleType(name)

        monkeypatch.setattr(importlib.metadata, "version", fake_version)
        monkeypatch.setattr(backends.importlib, "import_module", fake_import)
        return imported

    yield configure
    maybe_import_ipex.cache_clear()


@pytest.mark.parametrize("version", ["2.8.0", "2.8.10+xpu"])
def test_ipex_matching_torch_major_minor_is_imported(ipex, version):
    imported = ipex(version)
    module = maybe_import_ipex()
    assert module is not None and module.__name__ == "intel_extension_for_pytorch"
    assert imported == ["intel_extension_for_pytorch"]


def test_ipex_built_for_another_torch_is_skipped_before_import(ipex):
    imported = ipex("2.7.10+xpu")
    with pytest.warns(UserWarning, match="built for another torch than 2.8.0"):
        assert maybe_import_ipex() is None
    assert imported == []  # a mismatched IPEX would end the process at import


def test_missing_ipex_warns_once(ipex, recwarn):
    ipex(None)
    assert maybe_import_ipex() is None
    assert maybe_import_ipex() is None
    assert [str(warning.message) for warning in recwarn].count(
        "intel_extension_for_pytorch is not installed (optional, see requirements-intel.txt; "
        "continuing without Intel optimisations)"
    ) == 1


def test_ipex_that_fails_to_import_is_skipped(ipex):
    ipex("2.8.0", import_error=True)
    with pytest.warns(UserWarning, match="failed to import"):
        assert maybe_import_ipex() is None


# --- launcher scripts -------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without launcher variables, so each child starts a fresh launch."""
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in launch and not k.startswith(("PMI_", "OMPI_", "MV2_"))}
    return env | {"PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"} | extra


def run(*command: object, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        cwd=REPO,
        timeout=timeout,
    )


def dry_run(script: str, arguments: str, *more: str, **env: str) -> subprocess.CompletedProcess:
    return run(REPO / "scripts" / script, "--dry-run", *arguments.split(), *more, env=clean_env(**env))


@pytest.mark.parametrize("script", ["run_mpi_cpu.sh", "run_mpi_xpu.sh", "run_torchrun.sh", "_mpi_launch.sh"])
def test_shell_scripts_parse(script):
    assert run("bash", "-n", REPO / "scripts" / script).returncode == 0


@pytest.fixture
def fake_mpirun(tmp_path):
    """fake_mpirun("hydra" | "openmpi" | "intel"): an mpirun whose --version answers like that MPI's."""
    versions = {
        "hydra": "HYDRA build details:\n    Version: 5.0.2",  # MPICH 5 from PyPI, as seen here
        "openmpi": "mpirun (Open MPI) 4.1.6",  # as seen on the GPU machines
        "intel": "Intel(R) MPI Library for Linux* OS, Version 2021.13 Build 20240701",
    }

    def make(flavour: str) -> str:
        path = tmp_path / f"mpirun-{flavour}"
        path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{versions[flavour]}'\n")
        path.chmod(0o755)
        return str(path)

    return make


def test_run_mpi_cpu_builds_a_pinned_hydra_command_from_the_hostfile(fake_mpirun):
    mpirun = fake_mpirun("hydra")
    arguments = "-f hostfiles/mpich_hostfile -ppn 4 -t 14 finetune_clm.py --no_cuda --note"
    result = dry_run("run_mpi_cpu.sh", arguments, "two words", MPIRUN=mpirun)

    assert result.returncode == 0, result.stderr
    command = result.stderr.splitlines()[-1]
    assert command.startswith(f"+ {mpirun} -n 16 -ppn 4 -f hostfiles/mpich_hostfile -bind-to core:14")
    for pair in ("OMP_NUM_THREADS 14", "CCL_WORKER_COUNT 1", "MASTER_ADDR xeon-node01"):
        assert f"-genv {pair}" in command
    assert command.endswith(f"{sys.executable} finetune_clm.py --no_cuda --note two\\ words")


def test_run_mpi_cpu_speaks_open_mpi_and_intel_mpi(fake_mpirun):
    arguments = "-f hostfiles/openmpi_hostfile -ppn 2 -t 8 x.py"
    mpirun = fake_mpirun("openmpi")
    result = dry_run("run_mpi_cpu.sh", arguments, MPIRUN=mpirun, HF_HOME="/models")
    assert result.returncode == 0, result.stderr
    assert "--map-by ppr:2:node:PE=8 --bind-to core --hostfile hostfiles/openmpi_hostfile" in result.stderr
    assert f"+ {mpirun} -np 8 " in result.stderr
    assert "-x OMP_NUM_THREADS=8" in result.stderr and "-x HF_HOME=/models" in result.stderr
    assert ("--allow-run-as-root" in result.stderr) == (os.geteuid() == 0)

    result = dry_run("run_mpi_cpu.sh", "-n 2 -ppn 2 -t 4 x.py", MPIRUN=fake_mpirun("intel"))
    assert result.returncode == 0, result.stderr
    assert "-n 2 -ppn 2 -genv I_MPI_PIN_DOMAIN omp -genv OMP_NUM_THREADS 4" in result.stderr


def test_ranks_get_the_interpreter_by_absolute_path(fake_mpirun):
    # Open MPI started by absolute path puts its bin/ first on the ranks' PATH; "python3" would then miss the venv.
    relative = os.path.relpath(sys.executable, REPO)
    result = dry_run("run_mpi_cpu.sh", "-n 2 -ppn 2 x.py", MPIRUN=fake_mpirun("openmpi"), PYTHON=relative)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith(f" {REPO}/{relative} x.py")


def test_hostfile_of_the_other_mpi_family_is_refused(fake_mpirun):
    result = dry_run("run_mpi_cpu.sh", "-f hostfiles/openmpi_hostfile x.py", MPIRUN=fake_mpirun("hydra"))
    assert result.returncode == 2 and "Open MPI format" in result.stderr
    result = dry_run("run_mpi_cpu.sh", "-f hostfiles/mpich_hostfile x.py", MPIRUN=fake_mpirun("openmpi"))
    assert result.returncode == 2 and "MPICH format" in result.stderr


def test_run_mpi_xpu_sets_the_level_zero_and_fabric_variables(fake_mpirun):
    no_xpu = dry_run("run_mpi_xpu.sh", "x.py", MPIRUN=fake_mpirun("hydra"))
    assert no_xpu.returncode == 2 and "torch sees no XPU" in no_xpu.stderr

    result = dry_run("run_mpi_xpu.sh", "-ppn 4 -t 2 x.py", MPIRUN=fake_mpirun("hydra"))
    assert result.returncode == 0, result.stderr
    for pair in ("CCL_ZE_IPC_EXCHANGE sockets", "FI_PROVIDER tcp", "OMP_NUM_THREADS 2"):
        assert f"-genv {pair}" in result.stderr
    assert " -n 4 -ppn 4 " in result.stderr


def test_run_torchrun_defaults_to_one_process_without_accelerators():
    result = dry_run("run_torchrun.sh", "x.py --flag", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"+ {sys.executable} -m torch.distributed.run --nproc_per_node 1 --standalone x.py --flag"
    )
    multi = dry_run("run_torchrun.sh", "--nnodes 2 x.py")
    assert multi.returncode == 2 and "needs --master_addr" in multi.stderr


# --- real launches ----------------------------------------------------------------------------------------


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launcher(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not next to {sys.executable}")
    return path


def assert_one_job(result: subprocess.CompletedProcess, launcher_name: str) -> None:
    """Both ranks agree on one world of 2 over gloo, the all-reduce was exact, rank 0 measured bandwidth."""
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        expected = f"rank={rank} world_size=2 local_rank={rank} launcher={launcher_name} backend=gloo device=cpu"
        assert f"{expected} allreduce=ok" in result.stdout, result.stdout
    assert "over gloo:" in result.stdout and "busbw" in result.stdout


SMOKE_ARGS = ("--cpu", "--size_mb", "1", "--iters", "3")  # gloo on CPU wherever the tests run


@pytest.mark.distributed
def test_collectives_under_mpirun():
    result = run(
        launcher("mpirun"), "-n", "2", sys.executable, SMOKE, *SMOKE_ARGS, env=clean_env(MASTER_PORT=free_port())
    )
    assert_one_job(result, "mpich")


@pytest.mark.distributed
def test_collectives_under_torchrun():
    result = run(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SMOKE, *SMOKE_ARGS
    )
    assert_one_job(result, "torchrun")


@pytest.mark.distributed
def test_local_rank_is_derived_through_mpi4py_when_the_launcher_omits_it():
    pytest.importorskip("mpi4py")
    # MPICH's gforker exports PMI_RANK and PMI_SIZE but no MPI_LOCALRANKID.
    result = run(
        launcher("mpiexec.gforker"),
        "-n",
        "2",
        sys.executable,
        SMOKE,
        *SMOKE_ARGS,
        env=clean_env(MASTER_PORT=free_port()),
    )
    assert_one_job(result, "mpich")


@pytest.mark.distributed
def test_launcher_scripts_run_the_smoke_test():
    env = clean_env(MPIRUN=str(launcher("mpirun")), MASTER_PORT=free_port())
    result = run(REPO / "scripts/run_mpi_cpu.sh", "-n", "2", "-ppn", "2", SMOKE, *SMOKE_ARGS, env=env)
    assert_one_job(result, "mpich")
    assert_one_job(run(REPO / "scripts/run_torchrun.sh", "-n", "2", SMOKE, *SMOKE_ARGS), "torchrun")


TRAINING_ARGUMENTS_PROBE = r"""
import sys
from finetuning.launch.backends import set_local_device
from finetuning.launch.environment import setup_launch_environment
if sys.argv[1] == "mapped":
    set_local_device(setup_launch_environment())
from transformers import TrainingArguments
args = TrainingArguments(output_dir=sys.argv[2], report_to=[])
sys.stdout.write(f"rank={args.process_index} world={args.world_size} mode={args.parallel_mode.value}\n")
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_mpirun_on_a_host_without_accelerators_gives_transformers_one_job(tmp_path):
    """Without the mapping each rank trains alone (the control); with it, accelerate sees one world of 2."""
    probe = tmp_path / "probe.py"
    probe.write_text(TRAINING_ARGUMENTS_PROBE)
    outputs = {}
    for mode in ("raw", "mapped"):
        env = clean_env(MASTER_PORT=free_port(), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        result = run(launcher("mpirun"), "-n", "2", sys.executable, probe, mode, tmp_path / mode, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs[mode] = sorted(re.findall(r"rank=\d+ world=\d+ mode=\w+", result.stdout))

    assert outputs["raw"] == ["rank=0 world=1 mode=not_parallel"] * 2
    assert outputs["mapped"] == ["rank=0 world=2 mode=distributed", "rank=1 world=2 mode=distributed"]


def test_run_mpi_cpu_defaults_to_a_rank_per_four_cores_at_least_one_per_socket(fake_mpirun):
    mpirun = fake_mpirun("hydra")
    default = dry_run("run_mpi_cpu.sh", "x.py", MPIRUN=mpirun)
    one_core = dry_run("run_mpi_cpu.sh", "x.py", MPIRUN=mpirun, CORES_PER_RANK="1")
    assert default.returncode == 0 and one_core.returncode == 0, default.stderr + one_core.stderr

    def split(result):  # (ranks per node, threads per rank) from the command line
        words = result.stderr.splitlines()[-1].split()
        return int(words[words.index("-ppn") + 1]), int(words[words.index("OMP_NUM_THREADS") + 1])

    cores, threads = split(one_core)
    assert threads == 1  # a rank per physical core
    ranks, threads = split(default)  # cores // 4 ranks, more only where the node has more sockets
    assert ranks >= max(1, cores // 4) and threads == max(1, cores // ranks)
    bad = dry_run("run_mpi_cpu.sh", "x.py", MPIRUN=mpirun, CORES_PER_RANK="four")
    assert bad.returncode == 2 and "CORES_PER_RANK must be a positive integer" in bad.stderr


def test_run_mpi_cpu_preloads_the_measured_runtime_it_finds(fake_mpirun, tmp_path):
    libs = tmp_path / "unpacked-debs"
    libs.mkdir()
    for name in ("libjemalloc.so.2", "libtcmalloc_minimal.so.4", "libiomp5.so"):
        (libs / name).write_bytes(b"")
    env = {"MPIRUN": fake_mpirun("openmpi"), "CPU_LIB_DIRS": str(libs)}
    result = dry_run("run_mpi_cpu.sh", "-n 2 -ppn 2 -t 4 x.py", **env)  # auto: tcmalloc, GNU OpenMP pinned
    assert result.returncode == 0, result.stderr
    command = result.stderr.splitlines()[-1]
    assert f"-x LD_PRELOAD={libs}/libtcmalloc_minimal.so.4 " in command and "MALLOC_CONF" not in command
    assert "-x OMP_PROC_BIND=close -x OMP_PLACES=cores" in command and "KMP_" not in command

    result = dry_run(
        "run_mpi_cpu.sh",
        "-n 2 -ppn 2 -t 4 x.py",
        MPIRUN=fake_mpirun("hydra"),
        CPU_LIB_DIRS=str(libs),
        CPU_ALLOCATOR="jemalloc",
        CPU_OPENMP="intel",
    )
    assert result.returncode == 0, result.stderr
    command = result.stderr.splitlines()[-1].replace("\\,", ",")  # printf %q escapes the commas
    assert f"-genv LD_PRELOAD {libs}/libjemalloc.so.2:{libs}/libiomp5.so" in command
    assert "-genv KMP_AFFINITY granularity=fine,compact,1,0 -genv KMP_BLOCKTIME 1" in command
    assert "-genv MALLOC_CONF oversize_threshold:1," in command and "OMP_PROC_BIND" not in command
    assert f"# CPU runtime: allocator {libs}/libjemalloc.so.2; Intel OpenMP {libs}/libiomp5.so" in result.stderr


def test_run_mpi_cpu_without_extra_libraries_pins_gnu_openmp_and_refuses_bad_choices(fake_mpirun, tmp_path):
    env = {"MPIRUN": fake_mpirun("hydra"), "CPU_ALLOCATOR": "none", "CPU_OPENMP": "gnu"}
    result = dry_run("run_mpi_cpu.sh", "-n 2 -ppn 2 -t 4 x.py", **env)
    assert result.returncode == 0, result.stderr
    assert "LD_PRELOAD" not in result.stderr.splitlines()[-1]
    assert "-genv OMP_PROC_BIND close -genv OMP_PLACES cores" in result.stderr
    assert "# CPU runtime: allocator glibc malloc; GNU OpenMP" in result.stderr
    for name, value, message in [
        ("CPU_ALLOCATOR", "hoard", "CPU_ALLOCATOR must be auto, jemalloc, tcmalloc, none or a path"),
        ("CPU_ALLOCATOR", str(tmp_path / "missing.so"), "CPU_ALLOCATOR: cannot read"),
        ("CPU_OPENMP", "llvm", "CPU_OPENMP must be auto, intel or gnu"),
    ]:
        result = dry_run("run_mpi_cpu.sh", "-n 2 x.py", **(env | {name: value}))
        assert result.returncode == 2 and f"error: {message}" in result.stderr


# --- pinning an unbound rank (finetuning/launch/cpu_affinity.py) -------------------------------------------


def fake_sysfs(root, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(text + "\n")
    return root


def test_unbound_ranks_get_disjoint_physical_cores_and_no_hyper_thread_siblings(monkeypatch, tmp_path):
    from finetuning.launch.cpu_affinity import pin_unbound_cpu_rank

    # 4 cores with 2 hyper-threads each, numbered like Linux does: cpu i and cpu i+4 share a core
    sysfs = fake_sysfs(tmp_path, {cpu: f"{cpu % 4},{cpu % 4 + 4}" for cpu in range(8)})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    chosen = []
    for local_rank in range(2):
        env: dict[str, str] = {}
        chosen.append(pin_unbound_cpu_rank(env, local_rank, 2, usable=set(range(8)), sys_cpu=sysfs))
        assert env == {"OMP_NUM_THREADS": "2", "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
    assert chosen == [[0, 1], [2, 3]]
    # a rank the launcher bound already, or whose thread count the user set, is left alone
    assert pin_unbound_cpu_rank({}, 0, 2, usable={0, 4}, sys_cpu=sysfs) is None
    env = {"OMP_NUM_THREADS": "3"}
    assert pin_unbound_cpu_rank(env, 0, 2, usable=set(range(8)), sys_cpu=sysfs) is None
    assert env == {"OMP_NUM_THREADS": "3"}


def test_plain_mpirun_rank_is_pinned_before_torch_starts_openmp(tmp_path):
    """A real process, as `mpirun -n 2 python finetune_clm.py` starts local rank 1 (no torch imported yet)."""
    code = (
        "import os, sys; from finetuning.launch.environment import setup_launch_environment; "
        "before = sorted(os.sched_getaffinity(0)); setup_launch_environment(); assert 'torch' not in sys.modules; "
        "print(before, os.cpu_count()); print(sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'], "
        "os.environ.get('OMP_PLACES'))"
    )
    env = clean_env(**mpi_env("mpich", rank=1, size=2, local_rank=1, local_size=2))
    from finetuning.launch.cpu_affinity import physical_cores, rank_cores

    result = run(sys.executable, "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.splitlines()
    usable, cpus = json.loads(before.rsplit(" ", 1)[0]), int(before.rsplit(" ", 1)[1])
    if len(usable) < cpus:
        pytest.skip("the test runs bound to some cores already; a bound rank is left alone")
    expected = rank_cores(physical_cores(set(usable)), 1, 2)
    assert after == f"{expected} {len(expected)} cores"


def _physical_cores() -> int:
    listing = subprocess.run(["lscpu", "-p=CORE,SOCKET"], capture_output=True, text=True).stdout
    cores = {line for line in listing.splitlines() if line and not line.startswith("#")}
    return len(cores) or os.cpu_count() or 1


def test_run_mpi_cpu_n_ranks_on_one_host_never_oversubscribe_its_cores(fake_mpirun):
    # CORES_PER_RANK larger than the host makes the default one rank per node: -n 2 must still mean 2 ranks
    # here, each with its share of the cores, not 2 ranks each given every core.
    result = dry_run("run_mpi_cpu.sh", "-n 2 x.py", MPIRUN=fake_mpirun("hydra"), CORES_PER_RANK="1000")
    assert result.returncode == 0, result.stderr
    summary = re.search(r"(\d+) ranks, (\d+) per node on 1 node\(s\), (\d+) OpenMP threads each", result.stderr)
    assert summary is not None, result.stderr
    ranks, per_node, threads = map(int, summary.groups())
    assert (ranks, per_node) == (2, 2)
    assert ranks * threads <= max(_physical_cores(), 2)


def test_mpi_launchers_have_a_real_help():
    result = run(REPO / "scripts" / "run_mpi_cpu.sh", "--help")
    assert result.returncode == 0
    for option in ("-n, -np NP", "-ppn PER_NODE", "-t, --threads", "--dry-run", "MPIRUN"):
        assert option in result.stdout


def test_a_rendezvous_that_never_completes_names_where_it_waited(monkeypatch):
    """Rank 0 of 2 alone: after the timeout one line with the address and port, not torch's traceback."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", port)
    with pytest.raises(UserError) as raised:
        init_process_group(LaunchEnvironment(0, 2, 0, 2, "torchrun"), "gloo", timeout_s=1)
    message = str(raised.value)
    assert message.startswith(f"rank 0 of 2: the rendezvous at 127.0.0.1:{port} did not complete within 1 s (")
    assert "1/2 clients joined" in message and "\n" not in message
    assert not dist.is_initialized()
