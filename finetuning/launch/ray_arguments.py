"""scripts/ray_finetune.py's own flags: where Ray runs, how many workers, and what to do on a failure."""

from __future__ import annotations

from dataclasses import dataclass

from finetuning.cli import flag


@dataclass
class RayArguments:
    """scripts/ray_finetune.py's own flags; finetune_clm.py's flags follow ``--``."""

    config_file: str | None = flag(
        None, "An llm-on-ray fine-tuning YAML (either generation), or a finetune_clm.py YAML/JSON config."
    )
    config_path: str | None = flag(None, "llm-on-ray's earlier name of --config_file.")
    ray_address: str | None = flag(
        None, "Join this Ray cluster (e.g. <head-ip>:6379; default $RAY_ADDRESS). Neither: a local Ray."
    )
    max_failures: int = flag(0, "Restart the worker group this many times after a failure (Ray FailureConfig).")
    storage_path: str | None = flag(
        None, "Ray Train's run storage (default ~/ray_results); shared storage on a multi-node cluster."
    )
    num_workers: int | None = flag(None, "Ray Train workers (ranks); overrides Training.num_training_workers.")
    use_gpu: bool | None = flag(None, "One GPU per worker (nccl); overrides Training.device. Default: CPU (gloo).")
    cpus_per_worker: float | None = flag(
        None, "CPUs per worker; overrides Training.resources_per_worker.CPU (default 1)."
    )
