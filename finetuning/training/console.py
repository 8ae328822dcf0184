"""What a training run prints while it runs: loss lines with their step, one line saying how a distributed run
is laid out, a progress bar that a resumed run starts where it left off, and a warning when a run resumes with
settings that differ from those its checkpoints were trained with."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback

logger = logging.getLogger("finetuning")

# Settings that may change between an interrupted run and its resumption without changing what is trained.
RESUME_NEUTRAL = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "logging_dir",
        "run_name",
        "do_eval",
        "do_predict",
        "per_device_eval_batch_size",
        "eval_strategy",
        "evaluation_strategy",
        "disable_tqdm",
        "log_level",
        "report_to",
        "preprocessing_num_workers",
        "overwrite_cache",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "logging_steps",
        "logging_strategy",
        "eval_steps",
    }
)


class StepProgressCallback(ProgressCallback):
    """The Trainer's progress bar, started at the resumed step (it would otherwise count the resumed steps as
    done in the first second: "800/4000 [00:08<00:00, 4483.08it/s]"), with the step in each log line."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
        self.current_step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs={"step": state.global_step, **(logs or {})}, **kwargs)


class StepPrinterCallback(PrinterCallback):
    """``--disable_tqdm``'s plain log lines, with the step."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs={"step": state.global_step, **(logs or {})}, **kwargs)


def attach_console(trainer: Any) -> None:
    """Swap the Trainer's progress or printer callback for the one above."""
    for default, replacement in ((ProgressCallback, StepProgressCallback), (PrinterCallback, StepPrinterCallback)):
        if trainer.pop_callback(default) is not None:
            trainer.add_callback(replacement())


def log_distributed_layout(training_args: Any) -> None:
    """One line on the main process of a distributed run: how many processes, where, through what."""
    import os

    import torch.distributed as dist

    if training_args.world_size <= 1 or training_args.process_index != 0:
        return
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else training_args.ddp_backend
    from finetuning.launch.environment import setup_launch_environment

    launch = setup_launch_environment(dict(os.environ))  # a copy: reads the launcher, changes nothing
    logger.info(
        "distributed run: %d processes (%d on this node), backend %s, launched by %s, device %s",
        training_args.world_size,
        launch.local_world_size,
        backend,
        launch.launcher,
        training_args.device.type,
    )


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``name: before -> now`` for each setting that differs, those in :data:`RESUME_NEUTRAL` left out."""
    names = sorted((set(saved) | set(current)) - RESUME_NEUTRAL)
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]


def warn_if_resumed_differently(saved_file: Path, current: dict[str, Any]) -> None:
    """Warn, naming each difference, when a resumed run's settings differ from those of the run it resumes."""
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a run from before this file was written at the start: nothing to compare with
    # compare as the file stores them (JSON, with str() for what JSON cannot hold)
    differences = changed_settings(saved, json.loads(json.dumps(current, default=str)))
    if differences:
        logger.warning("resuming with settings that differ from the checkpoint's run: %s", "; ".join(differences))
