"""Pin the ranks of a plain ``mpirun -n N python finetune_clm.py`` to disjoint physical cores.

``scripts/run_mpi_cpu.sh`` has the MPI bind each rank; a plain ``mpirun`` (MPICH's Hydra binds nothing by
default) leaves every rank free to run on every core, hyper-thread siblings included, and the ranks' OpenMP
threads then migrate and collide. When the rank is unbound and OpenMP has not started yet (torch not imported),
this gives local rank ``i`` the ``i``-th contiguous share of the physical cores (one logical CPU per core),
one OpenMP thread per core, ``OMP_PROC_BIND=close`` and ``OMP_PLACES=cores``. Variables already set win; a
rank the launcher already bound is left alone. A memory allocator or Intel OpenMP cannot be preloaded from
inside a running process: that stays the launcher's job (scripts/run_mpi_cpu.sh).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)

SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(usable: set[int], sys_cpu: Path = SYS_CPU) -> list[int]:
    """The lowest usable logical CPU of each physical core, sorted; all usable CPUs where sysfs does not say."""
    chosen = set()
    for cpu in usable:
        siblings = sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            text = siblings.read_text().strip()
        except OSError:
            return sorted(usable)
        members = set()
        for part in text.split(","):
            low, _, high = part.partition("-")
            members.update(range(int(low), int(high or low) + 1))
        chosen.add(min(members & usable or {cpu}))
    return sorted(chosen)


def rank_cores(cores: list[int], local_rank: int, local_world_size: int) -> list[int]:
    """Local rank ``i``'s contiguous share of ``cores``; at least one core (shared only when ranks > cores)."""
    share = max(1, len(cores) // local_world_size)
    start = (local_rank * share) % len(cores)
    return cores[start : start + share]


def pin_unbound_cpu_rank(
    env: MutableMapping[str, str],
    local_rank: int,
    local_world_size: int,
    *,
    usable: set[int] | None = None,
    sys_cpu: Path = SYS_CPU,
) -> list[int] | None:
    """Pin this process (see the module's docstring); returns its cores, or None where it was left alone.

    ``usable`` defaults to this process's affinity; with ``env`` other than ``os.environ`` nothing is pinned
    (tests check the choice only).
    """
    if not hasattr(os, "sched_getaffinity") or ("torch" in sys.modules and env is os.environ):
        return None  # OpenMP may already run: binding variables would be read too late
    usable = set(os.sched_getaffinity(0)) if usable is None else usable
    if len(usable) < (os.cpu_count() or len(usable)) or "OMP_NUM_THREADS" in env:
        return None  # bound by the launcher or sized by the user: their choice
    cores = rank_cores(physical_cores(usable, sys_cpu), local_rank, local_world_size)
    env["OMP_NUM_THREADS"] = str(len(cores))
    env.setdefault("OMP_PROC_BIND", "close")
    env.setdefault("OMP_PLACES", "cores")
    if env is os.environ:
        os.sched_setaffinity(0, cores)
        logger.info("local rank %d pinned to cores %s", local_rank, cores)
    return cores
