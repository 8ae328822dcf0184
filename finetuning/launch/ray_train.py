"""Run finetune_clm.py as one data-parallel job of Ray Train workers (the llm-on-ray way of launching).

Each Ray Train worker starts the repo's own ``finetune_clm.py`` as a child process with torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), taken from
Ray's train context and worker 0's address, so the children form one torch.distributed job exactly as under
torchrun and run the same training code, outputs and resume logic. A child that exits non-zero makes its
worker raise, so Ray's ``FailureConfig(max_failures=N)`` restarts the group; the rerun of the same command
resumes from the last complete checkpoint in output_dir. Ray is imported inside functions only: the rest of the
suite never imports it, and without it :func:`require_ray` says how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetuning.cli import expand_config_file, read_config_file
from finetuning.errors import UserError
from finetuning.launch.llm_on_ray_config import RayPlan, is_llm_on_ray_config, map_llm_on_ray_config
from finetuning.launch.ray_arguments import RayArguments

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "finetune_clm.py"
INSTALL_HINT = "pip install -r requirements-ray.txt"
LOOPBACK = "127.0.0.1"
# A local Ray only coordinates this machine's workers; the trainer's data never goes through its object store.
LOCAL_OBJECT_STORE_BYTES = 100_000_000
# Set by Ray or torchrun for the worker itself; the child gets torchrun's set and nothing that contradicts it.
DROPPED_VARIABLES = ("ACCELERATE_TORCH_DEVICE", "NODE_RANK")
PR_SET_PDEATHSIG = 1


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    if not ray_available():
        raise UserError(f"Ray is not installed; {INSTALL_HINT}")


def build_plan(arguments: RayArguments, suite_flags: list[str]) -> RayPlan:
    """The run a command line asks for: its config file (either kind) and flags, then the flags after ``--``."""
    path = arguments.config_file or arguments.config_path
    plan = RayPlan()
    if path is not None:
        config = read_config_file(path)
        plan = (
            map_llm_on_ray_config(config, path) if is_llm_on_ray_config(config) else RayPlan(expand_config_file([path]))
        )
    plan.flags += suite_flags
    if arguments.num_workers is not None:
        plan.num_workers = arguments.num_workers
    if arguments.use_gpu is not None:
        plan.use_gpu = arguments.use_gpu
        if not plan.use_gpu:
            plan.resources_per_worker.pop("GPU", None)
    if arguments.cpus_per_worker is not None:
        plan.resources_per_worker["CPU"] = arguments.cpus_per_worker
    plan.resources_per_worker.setdefault("CPU", 1)
    if plan.use_gpu:
        plan.resources_per_worker.setdefault("GPU", 1)
    if plan.num_workers < 1:
        raise UserError("needs at least one worker", field="num_workers")
    return plan


def worker_environment(
    base: Mapping[str, str],
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    master: str,
    port: int,
) -> dict[str, str]:
    """The child's environment: the worker's, with torchrun's variables for this rank and nothing contradicting."""
    env = {
        name: value
        for name, value in base.items()
        if name not in DROPPED_VARIABLES and not name.startswith(("TORCHELASTIC_", "PMI_", "OMPI_", "MV2_"))
    }
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_world_size),
        MASTER_ADDR=master,
        MASTER_PORT=str(port),
    )
    return env


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the worker dies (Ray kills workers on a failure)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's function on every worker: run finetune_clm.py as this worker's rank of one torch job."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero
    from ray.util import get_node_ip_address

    context = ray.train.get_context()
    rank = context.get_world_rank()
    # Worker 0's address and a port free there: the children's rendezvous, as torchrun's --master_addr/port.
    master, port = broadcast_from_rank_zero(
        (get_node_ip_address(), _free_port(get_node_ip_address())) if rank == 0 else None
    )
    env = worker_environment(
        os.environ,
        rank=rank,
        world_size=context.get_world_size(),
        local_rank=context.get_local_rank(),
        local_world_size=context.get_local_world_size(),
        master=master,
        port=port,
    )
    command = [sys.executable, config["script"], *config["flags"]]
    # Relative paths in the flags mean what they meant where the command was typed, as under mpirun.
    cwd = config["cwd"] if Path(config["cwd"]).is_dir() else None
    returncode = subprocess.run(command, env=env, cwd=cwd, preexec_fn=_die_with_parent, check=False).returncode
    if returncode != 0:
        raise RuntimeError(f"rank {rank}: {Path(config['script']).name} exited with code {returncode}")


def _start_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start a local Ray that listens on the loopback address only."""
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}
    if address is None:
        # Ray otherwise swaps 127.0.0.1 for this machine's routable address and listens there.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    # Without a dashboard Ray's state API is down and Train's placement-group cleaner warns about it every
    # second; the training's own output is not Ray's logging and still shows.
    quiet = ray.LoggingConfig(log_level="ERROR")
    if address is not None:
        ray.init(address=address, runtime_env=runtime_env, logging_config=quiet)
        return
    ray.init(
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        runtime_env=runtime_env,
        logging_config=quiet,
    )


def _fit_resources(plan: RayPlan, *, local: bool, report: Callable[[str], None]) -> None:
    """Check the workers fit the cluster; a local Ray shrinks a too-large CPU request to this machine's size."""
    import ray

    available = ray.cluster_resources()
    for name, amount in plan.resources_per_worker.items():
        total = available.get(name, 0)
        if amount * plan.num_workers <= total:
            continue
        if local and name == "CPU" and total >= plan.num_workers:
            plan.resources_per_worker[name] = total // plan.num_workers
            report(
                f"{plan.num_workers} workers x {amount:g} CPUs do not fit this machine's {total:g}: "
                f"each worker gets {plan.resources_per_worker[name]:g}"
            )
            continue
        raise UserError(f"{plan.num_workers} workers x {amount:g} {name} do not fit the cluster's {total:g} {name}")


def run_on_ray(
    plan: RayPlan,
    *,
    address: str | None,
    max_failures: int,
    storage_path: str | None,
    report: Callable[[str], None],
) -> None:
    """Train ``plan`` on Ray Train (local unless ``address``); ``report`` shows resource adjustments."""
    _start_ray(address)
    import ray
    from ray.train import BackendConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    try:
        _fit_resources(plan, local=address is None, report=report)
        # TorchTrainer without its torch process group: the children start their own (gloo, nccl, ccl, xccl),
        # so the workers never hold a group, a rendezvous port or an accelerator context of their own.
        trainer = DataParallelTrainer(
            train_worker,
            train_loop_config={"script": str(TRAIN_SCRIPT), "flags": plan.flags, "cwd": os.getcwd()},
            backend_config=BackendConfig(),
            scaling_config=ScalingConfig(
                num_workers=plan.num_workers, use_gpu=plan.use_gpu, resources_per_worker=plan.resources_per_worker
            ),
            run_config=RunConfig(
                storage_path=None if storage_path is None else str(Path(storage_path).resolve()),
                failure_config=FailureConfig(max_failures=max_failures),
            ),
        )
        trainer.fit()
    except TrainingFailedError as error:
        failed = [line.strip() for line in str(error).splitlines() if "exited with code" in line]
        detail = failed[-1] if failed else str(error).splitlines()[0].rstrip(":")
        raise UserError(f"the Ray Train run failed ({max_failures} restarts allowed): {detail}; see above") from None
    finally:
        ray.shutdown()
