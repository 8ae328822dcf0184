"""Make every launcher look like torchrun, so each launch is one data-parallel job.

Users start the same script with ``mpirun`` (Intel MPI, MPICH, Open MPI, MVAPICH), with ``torchrun`` or as a
plain single process. transformers and accelerate understand torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) on every device, but MPI's only on
the CPU path: under ``mpirun`` on GPUs or XPUs accelerate finds no ``LOCAL_RANK``, so every rank silently
trains its own copy of the model. :func:`setup_launch_environment` translates the launcher's variables once,
before ``TrainingArguments`` exists, so that torch.distributed's ``env://`` rendezvous and accelerate's device
choice (``LOCAL_RANK`` modulo the device count) agree on every device.

Backend and device choice live in :mod:`finetuning.launch.backends`. Nothing heavy is imported at module
import time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, overload

from finetuning.errors import UserError
from finetuning.launch.cpu_affinity import pin_unbound_cpu_rank

logger = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = "29500"
LOOPBACK_ADDRESS = "127.0.0.1"
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

# Launcher -> its (rank, world size, local rank, local world size) variables. The more specific flavours come
# first: MVAPICH's and Intel MPI's Hydra also export PMI_RANK, and MPICH's name is the fallback for all of them.
MPI_VARIABLES: dict[str, tuple[str, str, str, str]] = {
    "openmpi": (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    "mvapich": (
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
    ),
    "mpich": ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
}


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process sits in the job; the same numbers torch.distributed and accelerate will see."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "single", "torchrun", "mpich" (also Intel MPI and other PMI launchers), "openmpi", "mvapich"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def setup_launch_environment(environ: MutableMapping[str, str] | None = None) -> LaunchEnvironment:
    """Map the launcher's variables onto torch.distributed's and fill in what a rendezvous needs.

    Call it first in ``main``, before ``TrainingArguments``: accelerate reads the environment when the
    arguments first touch the device. Variables that are already set (by torchrun or by the user) always win.
    For a distributed launch it also sets ``MASTER_ADDR`` (127.0.0.1 when every rank is on this host, else
    rank 0's address through mpi4py, else a :class:`UserError`), ``MASTER_PORT`` (29500) and
    ``OMP_NUM_THREADS`` (this rank's share of the usable CPUs). A single process gets no variables at all.
    ``environ`` defaults to ``os.environ``; tests pass a dict. Calling it twice changes nothing.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    flavour = next((name for name, names in MPI_VARIABLES.items() if names[0] in env), None)
    mpi_names = MPI_VARIABLES.get(flavour or "", (None, None, None, None))
    # torchrun and torch.distributed.launch set TORCHELASTIC_RUN_ID; RANK alone may be this function's own
    # output from an earlier call under mpirun, which must still say "mpich".
    torch_style = "TORCHELASTIC_RUN_ID" in env or (flavour is None and "RANK" in env and "WORLD_SIZE" in env)
    launcher = "torchrun" if torch_style else flavour or "single"

    rank = _read_int(env, "RANK", mpi_names[0], default=0)
    world_size = _read_int(env, "WORLD_SIZE", mpi_names[1], default=1)
    # Impossible numbers would otherwise become a rendezvous that never completes.
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside a world of size {world_size} (check RANK/WORLD_SIZE)")
    local_rank = _read_int(env, "LOCAL_RANK", mpi_names[2], default=None)
    local_world_size = _read_int(env, "LOCAL_WORLD_SIZE", mpi_names[3], default=None)
    if world_size == 1:
        local_rank, local_world_size = 0, 1
    elif local_rank is None or local_world_size is None:
        local_rank, local_world_size = _local_ranks_from_mpi(world_size)
    if not 0 <= local_rank < local_world_size <= world_size:
        raise UserError(
            f"local rank {local_rank} of {local_world_size} does not fit a world of size {world_size} "
            "(check LOCAL_RANK/LOCAL_WORLD_SIZE)"
        )
    launch = LaunchEnvironment(rank, world_size, local_rank, local_world_size, launcher)
    if not launch.is_distributed:
        # A lone process must not gain LOCAL_RANK: accelerate would then start a one-process group.
        return launch

    for name, value in zip(TORCH_VARIABLES, (rank, world_size, local_rank, local_world_size), strict=True):
        env.setdefault(name, str(value))
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = _master_address(launch)
    env.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)
    if launcher != "torchrun":  # an unbound MPI rank: its own physical cores (finetuning/launch/cpu_affinity.py)
        pin_unbound_cpu_rank(env, local_rank, local_world_size)
    if "OMP_NUM_THREADS" not in env:
        _split_cpu_threads(env, local_world_size, apply_to_torch=environ is None)
    # torch.compile's inductor starts a compile worker per CPU in each rank; N ranks compiling at once would
    # start N times as many as there are CPUs. Each rank gets its share, as for OpenMP.
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", env["OMP_NUM_THREADS"])
    logger.info("launch: %s, rendezvous at %s:%s", launch, env["MASTER_ADDR"], env["MASTER_PORT"])
    return launch


@overload
def _read_int(env: MutableMapping[str, str], name: str, fallback: str | None, *, default: int) -> int: ...
@overload
def _read_int(env: MutableMapping[str, str], name: str, fallback: str | None, *, default: None) -> int | None: ...
def _read_int(env: MutableMapping[str, str], name: str, fallback: str | None, *, default: int | None) -> int | None:
    """Read torch's variable, else the launcher's; a non-integer is the user's mistake, named in one line."""
    for key in (name, fallback):
        if key is not None and key in env:
            try:
                return int(env[key])
            except ValueError:
                raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from None
    return default


def _local_ranks_from_mpi(world_size: int) -> tuple[int, int]:
    """Derive the node-local rank when the launcher does not export it (e.g. MPICH's gforker, srun's PMI)."""
    comm = _mpi_world(world_size)
    if comm is None:
        raise UserError(
            "the launcher does not say which ranks share a host (no LOCAL_RANK, MPI_LOCALRANKID, "
            "OMPI_COMM_WORLD_LOCAL_RANK or MV2_COMM_WORLD_LOCAL_RANK); set LOCAL_RANK and LOCAL_WORLD_SIZE "
            "or install mpi4py"
        )
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def _master_address(launch: LaunchEnvironment) -> str:
    """Choose rank 0's address for the rendezvous.

    When all ranks share one host the loopback address is always right and needs no MPI, so it is tried before
    asking MPI; across hosts rank 0 broadcasts its own routable address through mpi4py.
    """
    if launch.local_world_size == launch.world_size:
        return LOOPBACK_ADDRESS
    comm = _mpi_world(launch.world_size)
    if comm is not None:
        return comm.bcast(_routable_address() if comm.Get_rank() == 0 else None, root=0)
    raise UserError(
        f"MASTER_ADDR is not set and the {launch.world_size} ranks span several hosts "
        f"({launch.local_world_size} on this one); export MASTER_ADDR=<rank 0's hostname> (e.g. the first host "
        "of the hostfile; scripts/run_mpi_cpu.sh does this) or install mpi4py so rank 0 can share it"
    )


def _mpi_world(world_size: int) -> Any | None:
    """mpi4py's COMM_WORLD if it imports and sees the same job; else None.

    An mpi4py built against another MPI than the launcher's starts as a singleton (size 1) instead of failing;
    trusting it would hand every rank its own address, so a size mismatch counts as "no mpi4py".
    """
    try:
        from mpi4py import MPI
    except (ImportError, OSError, RuntimeError) as error:  # no mpi4py, or an MPI library that fails to load
        logger.debug("mpi4py unavailable: %s", error)
        return None
    if MPI.COMM_WORLD.Get_size() != world_size:
        logger.warning(
            "mpi4py sees %d ranks but the launcher says %d; mpi4py is built for another MPI, not using it",
            MPI.COMM_WORLD.Get_size(),
            world_size,
        )
        return None
    return MPI.COMM_WORLD


def _routable_address() -> str:
    """This host's first non-loopback IPv4 address, else its hostname for the other hosts' resolver.

    Debian-style /etc/hosts maps the hostname to 127.0.1.1, which the other hosts cannot reach.
    """
    hostname = socket.gethostname()
    try:
        addresses = socket.gethostbyname_ex(hostname)[2]
    except OSError:
        return hostname
    return next((address for address in addresses if not address.startswith("127.")), hostname)


def _split_cpu_threads(env: MutableMapping[str, str], local_world_size: int, *, apply_to_torch: bool) -> None:
    """Give each rank its share of this process's usable CPUs, so ranks on one host do not oversubscribe.

    Left alone, every rank starts one OpenMP thread per core, and N ranks fight over the same cores.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, usable // local_world_size)
    env["OMP_NUM_THREADS"] = str(threads)
    # OpenMP read the variable when torch loaded; a torch imported earlier must be told directly.
    if apply_to_torch and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
