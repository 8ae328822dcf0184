"""The part of a fine-tuning run after the data and model are ready: output-directory rules, the Trainer,
training, saving everything inference needs, and evaluation. Both fine-tune scripts run through here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetuning.data.templates import Rendering, save_rendering
from finetuning.errors import UserError
from finetuning.training import checkpoints, console

logger = logging.getLogger("finetuning")

RUN_ARGUMENTS_FILE = "finetune_args.json"
# Written after the model: a run killed while saving its final model has no results yet and resumes.
RESULTS_MARKERS = ("all_results.json", "train_results.json")
FINISHED_MARKERS = (*RESULTS_MARKERS, "adapter_config.json", "model.safetensors")
QUIET_BELOW_DEBUG = (
    "transformers.configuration_utils",
    "transformers.generation.configuration_utils",
    "transformers.modeling_utils",
    "transformers.tokenization_utils_base",
    "transformers.utils.hub",
)


def setup_logging(training_args: Any) -> None:
    """INFO on the main process, warnings elsewhere: one data report and one config log per job."""
    import transformers

    main = training_args.process_index == 0 if hasattr(training_args, "process_index") else True
    level = logging.INFO if main else logging.WARNING
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=level,
        stream=sys.stdout,
        force=True,
    )
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if training_args.get_process_log_level() > logging.DEBUG:
        # At info these print every config they read or write in full: ~180 lines for a 5-step run.
        for name in QUIET_BELOW_DEBUG:
            logging.getLogger(name).setLevel(max(logging.WARNING, training_args.get_process_log_level()))
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def resolve_resume_checkpoint(training_args: Any) -> str | None:
    """Decide what an existing output_dir means before anything is written to it.

    A finished run is never overwritten unless ``--overwrite_output_dir``; an interrupted one (checkpoints,
    no final results) resumes from its last complete checkpoint (see finetuning/training/checkpoints.py: a checkpoint
    the run was killed while writing is skipped); ``--resume_from_checkpoint`` wins.
    """
    if training_args.resume_from_checkpoint:
        path = Path(training_args.resume_from_checkpoint)
        problem = "no such checkpoint directory" if not path.is_dir() else None
        problem = problem or checkpoints.checkpoint_problem(path, require_marker=False)
        if problem:
            raise UserError(problem, path=str(path), field="resume_from_checkpoint")
        return training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir() or training_args.overwrite_output_dir or not training_args.do_train:
        return None
    checkpoint = checkpoints.last_complete_checkpoint(output_dir)
    finished = RESULTS_MARKERS if checkpoint else FINISHED_MARKERS
    if any((output_dir / marker).exists() for marker in finished):
        raise UserError(
            "holds a finished run; pass --overwrite_output_dir to train again there",
            path=str(output_dir),
            field="output_dir",
        )
    if checkpoint is not None:
        logger.info("resuming from %s (pass --overwrite_output_dir to start over)", checkpoint)
    return checkpoint


def prepare_trainer(trainer: Any) -> None:
    """What every script's Trainer gets before it runs: complete checkpoints, a clean stop on SIGTERM/SIGINT and
    no training on NaN (reliability), ``--use_ipex``, and TensorBoard events under OUTPUT_DIR/runs."""
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import default_logdir

    from finetuning.training import reliability
    from finetuning.training.ipex import apply_ipex

    reliability.attach(trainer)
    apply_ipex(trainer)  # ipex.optimize where a matching IPEX is installed, else one warning
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            # transformers learns the output directory only when training begins: a run that only evaluates or
            # predicts wrote its events into ./runs of whatever directory it was started from
            callback.logging_dir = os.path.join(trainer.args.output_dir, default_logdir())


def log_run_summary(model: Any, arguments: tuple[Any, ...]) -> None:
    """Log the trainable-parameter count and the resolved configuration once (main process only)."""
    from transformers import TrainingArguments

    from finetuning.model.peft_setup import count_parameters

    trainable, total = count_parameters(model)
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / max(total, 1))
    for group in arguments:
        if not isinstance(group, TrainingArguments):  # the Trainer logs its own arguments
            logger.info("%s: %s", type(group).__name__, dataclasses.asdict(group))


def run_arguments(arguments: tuple[Any, ...]) -> dict[str, Any]:
    """The run's full configuration as one flat mapping of flag names to values."""
    payload: dict[str, Any] = {}
    for group in arguments:
        values = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        payload.update({key: value for key, value in values.items() if not key.startswith("_")})
    if payload.get("report_to") == []:  # no destination is "none", which its default (None) is not
        payload["report_to"] = "none"
    for key in [key for key, value in payload.items() if value == []]:
        del payload[key]  # a flag cannot spell an empty list; leaving it out gives the same default back
    return payload


def save_run_arguments(output_dir: str, arguments: tuple[Any, ...]) -> None:
    """The run's full configuration, next to the model, in a form the scripts read back as a config file."""
    payload = run_arguments(arguments)
    (Path(output_dir) / RUN_ARGUMENTS_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _accelerator(args: Any) -> Any:
    """``torch.cuda`` or ``torch.xpu`` when the run trains on one, else None."""
    import torch

    return getattr(torch, args.device.type) if args.device.type in ("cuda", "xpu") else None


class ThroughputMeter(TrainerCallback):
    """Adds steady-state speed to the train metrics.

    ``train_tokens_per_second`` of the Trainer divides by the whole run, start-up and first (compiling,
    autotuning) steps included, which hides what a longer run will do. This one counts from the end of step
    ``skip_steps`` (fewer on a short run): non-pad tokens per second summed over ranks when
    ``--include_num_input_tokens_seen non_padding`` (or ``all``) is on, and each run's peak accelerator memory.
    """

    def __init__(self, skip_steps: int = 3) -> None:
        self.skip_steps = skip_steps
        self.start: tuple[int, float, int] | None = None  # (step, time, tokens seen) at the end of that step
        self.end: tuple[int, float, int] | None = None
        self.metrics: dict[str, float] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        first = state.global_step <= min(self.skip_steps, state.max_steps // 4)
        accelerator = _accelerator(args)
        if (first or state.global_step == state.max_steps) and accelerator is not None:
            accelerator.synchronize()  # the device runs behind the Python loop
        mark = (state.global_step, time.perf_counter(), state.num_input_tokens_seen)
        if first:
            self.start = mark
        self.end = mark

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.start and self.end and self.end[0] > self.start[0]:
            seconds = self.end[1] - self.start[1]
            self.metrics["train_steady_steps_per_second"] = round((self.end[0] - self.start[0]) / seconds, 4)
            if self.end[2] > self.start[2]:
                self.metrics["train_steady_tokens_per_second"] = round((self.end[2] - self.start[2]) / seconds, 1)
        accelerator = _accelerator(args)
        if accelerator is not None and accelerator.is_available():
            self.metrics["train_peak_memory_gib"] = round(accelerator.max_memory_allocated() / 2**30, 2)
        if self.metrics and state.is_world_process_zero:
            logger.info("steady state (after step %d): %s", self.start[0] if self.start else 0, self.metrics)


def train_and_save(
    trainer: Any,
    *,
    arguments: tuple[Any, ...],
    rendering: Rendering,
    resume_from: str | None,
    train_samples: int,
) -> dict[str, float]:
    """Train, save model + tokenizer + prompt rendering + arguments + metrics; returns the train metrics."""
    from finetuning.training import reliability

    training_args = trainer.args
    meter = ThroughputMeter()
    trainer.add_callback(meter)
    console.attach_console(trainer)
    console.log_distributed_layout(training_args)
    if trainer.is_world_process_zero():
        if resume_from:  # the run's arguments are saved at its start: compare them with the resumed run's
            console.warn_if_resumed_differently(Path(resume_from).parent / RUN_ARGUMENTS_FILE, run_arguments(arguments))
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        save_run_arguments(training_args.output_dir, arguments)
    result = trainer.train(resume_from_checkpoint=resume_from)
    reliability.exit_if_stopped(trainer)  # stopped by SIGTERM/SIGINT: a checkpoint, not a finished run
    trainer.save_model()
    metrics = dict(result.metrics) | meter.metrics
    metrics["train_samples"] = train_samples
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        make_weights_readable(training_args.output_dir)
        save_rendering(training_args.output_dir, rendering)
        save_run_arguments(training_args.output_dir, arguments)
    return metrics


def evaluate_and_save(trainer: Any, *, eval_samples: int, **evaluate_kwargs: Any) -> dict[str, float]:
    """Evaluation loss and perplexity (exp of the mean token loss), saved as eval_results.json."""
    metrics = trainer.evaluate(**evaluate_kwargs)
    metrics["eval_samples"] = eval_samples
    loss = metrics.get("eval_loss")
    if loss is not None:
        metrics["perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def make_weights_readable(directory: str) -> None:
    """Weights get the mode of any other saved file (0644 under the usual umask): safetensors writes them 0600,
    which other accounts of a cluster, or a serving container's user, cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(directory).rglob("*.safetensors"):
        path.chmod(0o666 & ~umask)


def _dataset_tokens(dataset: Any) -> int | None:
    """Tokens (no padding: batches are padded later, by the collator) in one pass over the training data."""
    if dataset is None or "input_ids" not in dataset.column_names:
        return None
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(dataset.data.column("input_ids"))).as_py() or 0)


def report_run(trainer: Any, arguments: tuple[Any, ...], metrics: dict[str, float]) -> None:
    """The run report in output_dir (finetuning/training/report.py): loss curve and model card, main process only."""
    if not trainer.is_world_process_zero():
        return
    from finetuning.training.report import write_run_report

    written = write_run_report(
        trainer.args.output_dir,
        arguments,
        metrics,
        trainer.state.log_history,
        train_tokens=_dataset_tokens(trainer.train_dataset),
    )
    logger.info("run report: %s", ", ".join(str(path) for path in written))
