"""Pick the collective backend and the device of each rank, and load Intel's optional extras.

The launcher's variables are mapped in :mod:`finetuning.launch.environment`; this module decides what runs on them.
Availability probes are small functions of their own so tests can replace them: no test machine has CUDA,
XPUs or oneCCL. torch is imported inside functions, never at module import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import re
import warnings
from collections.abc import MutableMapping
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING

from finetuning.errors import UserError

if TYPE_CHECKING:
    from finetuning.launch.environment import LaunchEnvironment

# Which device types each backend can move tensors on, and what to install when it is missing.
BACKEND_DEVICES: dict[str, frozenset[str]] = {
    "gloo": frozenset({"cpu", "cuda"}),
    "nccl": frozenset({"cuda"}),
    "xccl": frozenset({"xpu"}),
    "ccl": frozenset({"cpu", "xpu"}),
    "mpi": frozenset({"cpu"}),
}
INSTALL_HINTS: dict[str, str] = {
    "gloo": "a PyTorch build with gloo (every official wheel has it)",
    "nccl": "a CUDA build of PyTorch and a visible NVIDIA GPU",
    "xccl": "a PyTorch build with XPU support (torch >= 2.8 from the xpu wheel index) and a visible Intel GPU",
    "ccl": "oneccl_bind_pt matching your torch major.minor (see requirements-intel.txt)",
    "mpi": "a PyTorch built from source against MPI",
}
CCL_MODULE = "oneccl_bindings_for_pytorch"
IPEX_MODULE = "intel_extension_for_pytorch"


def resolve_ddp_backend(requested: str | None, device_type: str, *, world_size: int | None = None) -> str | None:
    """The torch.distributed backend for ``device_type`` ("cpu", "cuda", "xpu"; "cuda:1" is accepted).

    None for a single process (``world_size`` defaults to ``$WORLD_SIZE``), so no process group is made.
    Without a request: CPU -> ``ccl`` when oneCCL's bindings import, else ``gloo``; CUDA -> ``nccl``;
    XPU -> ``xccl`` when torch has it, else ``ccl``. A requested backend that is not installed, or cannot
    handle the device, is a :class:`UserError` naming what to install, not a hang at the first all-reduce.
    """
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    device = device_type.split(":", 1)[0].lower()
    backend = requested.lower() if requested else _default_backend(device)
    if backend not in BACKEND_DEVICES:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_DEVICES)}", field="ddp_backend")
    if device not in BACKEND_DEVICES[backend]:
        usable = ", ".join(name for name, devices in BACKEND_DEVICES.items() if device in devices)
        raise UserError(f"backend {backend!r} cannot run on {device}; use one of: {usable}", field="ddp_backend")
    if not _backend_available(backend):
        raise UserError(f"backend {backend!r} is not available; it needs {INSTALL_HINTS[backend]}", field="ddp_backend")
    if backend == "ccl":
        # oneCCL's default worker threads compete with the rank's OpenMP threads for the same cores.
        os.environ.setdefault("CCL_WORKER_COUNT", "1")
    return backend


def _default_backend(device: str) -> str:
    if device == "cpu":
        return "ccl" if _ccl_available() else "gloo"
    if device == "cuda":
        return "nccl"
    if device == "xpu":
        if _xccl_available():
            return "xccl"
        if _ccl_available():
            return "ccl"
        raise UserError(f"no collective backend for XPU; install {INSTALL_HINTS['xccl']}, or {INSTALL_HINTS['ccl']}")
    raise UserError(f"no data-parallel backend known for device {device!r}; use cpu, cuda or xpu")


def _backend_available(backend: str) -> bool:
    import torch.distributed as dist

    if backend == "gloo":
        return dist.is_gloo_available()
    if backend == "nccl":
        return _cuda_available() and dist.is_nccl_available()
    if backend == "xccl":
        return _xccl_available()
    if backend == "ccl":
        return _ccl_available()
    return dist.is_mpi_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _xpu_available() -> bool:
    import torch

    return hasattr(torch, "xpu") and torch.xpu.is_available()


def _xccl_available() -> bool:
    import torch.distributed as dist

    probe = getattr(dist, "is_xccl_available", None)
    return _xpu_available() and probe is not None and probe()


@functools.cache
def _ccl_available() -> bool:
    """Import oneCCL's bindings, which registers the ``ccl`` backend; False when absent or broken (cached)."""
    if importlib.util.find_spec(CCL_MODULE) is None:
        return False
    try:
        importlib.import_module(CCL_MODULE)
    except (ImportError, OSError, RuntimeError) as error:  # usually built for another torch version
        warnings.warn(f"{CCL_MODULE} is installed but does not import ({error}); not using ccl", stacklevel=2)
        return False
    return True


def device_for_local_rank(local_rank: int, *, use_cpu: bool = False) -> str:
    """``"cuda:i"``, ``"xpu:i"`` or ``"cpu"`` for the rank with this node-local index.

    The index is taken modulo the visible device count, the same rule accelerate applies, so the device set
    here is the one accelerate later picks (and a launcher that shows each rank one GPU still works).
    """
    if use_cpu:
        return "cpu"
    import torch

    if _cuda_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    if _xpu_available():
        return f"xpu:{local_rank % torch.xpu.device_count()}"
    return "cpu"


def set_local_device(
    launch: LaunchEnvironment, *, use_cpu: bool = False, environ: MutableMapping[str, str] | None = None
) -> str:
    """Make this rank's device current and return it (see :func:`device_for_local_rank`).

    Setting it before anything touches the accelerator keeps every rank off device 0. On a CPU-only host a
    distributed run also sets ``ACCELERATE_USE_CPU=true``: without ``--no_cuda`` accelerate would otherwise
    find no accelerator, start no data-parallel group and let each rank train alone.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    device = device_for_local_rank(launch.local_rank, use_cpu=use_cpu)
    kind = device.split(":", 1)[0]
    if kind != "cpu":
        import torch

        getattr(torch, kind).set_device(device)
    elif launch.is_distributed:
        env["ACCELERATE_USE_CPU"] = "true"
    return device


def init_process_group(launch: LaunchEnvironment, backend: str | None, *, timeout_s: float = 1800.0) -> bool:
    """Start the default process group now; True when this call started it.

    accelerate reuses a group that already exists. That is the way to run ``ccl`` on CPU: accelerate's CPU path
    accepts only ``gloo``/``mpi`` as a backend name, and transformers' ``--ddp_backend`` has no ``ccl`` choice,
    so start the group here and leave ``ddp_backend`` unset. A rendezvous that does not complete within
    ``timeout_s`` (a node that never came, or cannot reach ``MASTER_ADDR``) is a :class:`UserError` naming
    the address and port this rank waited on.
    """
    if not launch.is_distributed or backend is None:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    if backend == "ccl":
        importlib.import_module(CCL_MODULE)
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except dist.DistError as error:  # DistStoreError, DistNetworkError: a rank that never came, or no route
        raise UserError(_rendezvous_failure(launch, timeout_s, error)) from None
    return True


def _rendezvous_failure(launch: LaunchEnvironment, timeout_s: float, error: Exception) -> str:
    """One line for a rendezvous that did not complete: where this rank waited, how long, and torch's reason."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"rank {launch.rank} of {launch.world_size}: the rendezvous at {where} did not complete within "
        f"{timeout_s:g} s ({reason}); check that every node started and can reach {where} "
        "(scripts/collectives_smoke.py run the same way tests it; --ddp_timeout sets the wait)"
    )


def _major_minor(version: str) -> tuple[int, ...]:
    """``"2.8.10+xpu"`` -> ``(2, 8)``; extensions are built for one torch major.minor."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (-1, -1)


@functools.cache
def maybe_import_ipex() -> ModuleType | None:
    """Intel Extension for PyTorch when installed and built for this torch; else None with one warning.

    The versions are compared before importing because a mismatched IPEX ends the process at import time.
    Cached, so the warning appears once per process.
    """
    hint = "optional, see requirements-intel.txt; continuing without Intel optimisations"
    try:
        ipex_version = importlib.metadata.version(IPEX_MODULE)
    except importlib.metadata.PackageNotFoundError:
        warnings.warn(f"{IPEX_MODULE} is not installed ({hint})", stacklevel=2)
        return None
    import torch

    if _major_minor(ipex_version) != _major_minor(torch.__version__):
        warnings.warn(
            f"{IPEX_MODULE} {ipex_version} is built for another torch than {torch.__version__} ({hint})",
            stacklevel=2,
        )
        return None
    try:
        return importlib.import_module(IPEX_MODULE)
    except (ImportError, OSError, RuntimeError) as error:
        warnings.warn(f"{IPEX_MODULE} {ipex_version} failed to import: {error} ({hint})", stacklevel=2)
        return None
