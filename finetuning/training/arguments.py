"""The training flags: ``transformers.TrainingArguments`` plus the project's own (finetuning/training/flags.py).

``TrainingArguments`` supplies everything it already has; the classes here mix in the project's speed,
reliability and report switches and the old flags, settle what they mean on this machine (device, process
group, log destination), and refuse values that would only fail later with a traceback.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from finetuning.cli import flag
from finetuning.errors import UserError
from finetuning.training.flags import LegacyTrainingFlags, ReliabilityFlags, ReportFlags, SpeedFlags


def tensorboard_installed() -> bool:
    """Whether transformers' TensorBoard callback can write (it takes tensorboard or tensorboardX)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def _device_type(use_cpu: bool) -> str:
    from finetuning.launch.backends import device_for_local_rank

    return device_for_local_rank(0, use_cpu=use_cpu).split(":")[0]


def _start_backend(requested: str | None, device_type: str, timeout_s: float) -> str | None:
    """The ``ddp_backend`` to hand transformers: None for one process, where a backend means nothing (old
    releases ignored it too). oneCCL is started here because accelerate accepts only gloo/mpi on the CPU
    and reuses a process group that already exists."""
    from finetuning.launch.backends import init_process_group, resolve_ddp_backend
    from finetuning.launch.environment import setup_launch_environment

    launch = setup_launch_environment()
    if not launch.is_distributed:
        return None
    backend = resolve_ddp_backend(requested, device_type, world_size=launch.world_size)
    if backend == "ccl" or device_type == "cpu":
        # On the CPU transformers does not hand --ddp_timeout to accelerate (the group would wait 30 minutes
        # whatever the flag says): a group started here has it, and accelerate reuses the group.
        init_process_group(launch, backend, timeout_s=timeout_s)
    return None if backend == "ccl" else backend


def _report_destinations(report_to: str | list[str] | None) -> str | list[str]:
    if report_to is None:
        return "tensorboard" if tensorboard_installed() else "none"
    wanted = report_to if isinstance(report_to, list) else [report_to]
    if "tensorboard" in wanted and not tensorboard_installed():
        raise UserError("--report_to tensorboard: tensorboard is not installed (pip install tensorboard)")
    return report_to


def _refuse_what_would_fail_later(args: Any) -> None:
    """Values the optimizer or the hub client would reject only after the model is loaded, with a traceback."""
    if args.learning_rate < 0:
        raise UserError(f"--learning_rate: must not be negative, got {args.learning_rate}")
    if args.push_to_hub:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise UserError("--push_to_hub: the hub is offline here (HF_HUB_OFFLINE is set)")


class _SettleOnThisMachine:
    """The ``__post_init__`` both argument classes share: old flags, device, process group, log destinations."""

    def __post_init__(self: Any) -> None:
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.no_cuda:
            self.use_cpu = True
        if self.warmup_ratio is not None:
            self.warmup_steps = self.warmup_ratio
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        if self.output_dir is None:
            raise UserError("--output_dir is required", field="output_dir")
        _refuse_what_would_fail_later(self)
        self.report_to = _report_destinations(self.report_to)
        device_type = _device_type(self.use_cpu)
        if device_type == "cpu":
            # Without an accelerator say so: transformers refuses --bf16 otherwise (the old scripts' "--bf16 on
            # Sapphire Rapids" means bf16 autocast on the CPU), and accelerate starts no CPU data-parallel job.
            self.use_cpu = True
        self.ddp_backend = _start_backend(self.ddp_backend or self.xpu_backend, device_type, self.ddp_timeout)
        super().__post_init__()  # type: ignore[misc]


@dataclass
class PredictionFlags:
    """``--do_predict`` for causal LMs: the decoding settings ``Seq2SeqTrainingArguments`` has for seq2seq."""

    generation_max_length: int = flag(128, "--do_predict: most new tokens generated per answer.")
    generation_num_beams: int = flag(1, "--do_predict: beam search width; 1: none.")


@dataclass
class FinetuneTrainingArguments(
    _SettleOnThisMachine,
    SpeedFlags,
    ReliabilityFlags,
    ReportFlags,
    LegacyTrainingFlags,
    PredictionFlags,
    TrainingArguments,
):
    """``TrainingArguments`` plus the project's flags, ``--do_predict``'s decoding and the old flags."""


@dataclass
class Seq2SeqFinetuneTrainingArguments(
    _SettleOnThisMachine, SpeedFlags, ReliabilityFlags, ReportFlags, LegacyTrainingFlags, Seq2SeqTrainingArguments
):
    """``Seq2SeqTrainingArguments`` plus the project's flags and the old ones."""

    # transformers' help promises BLEU too; this suite computes ROUGE only (finetuning/training/seq2seq.py).
    predict_with_generate: bool = flag(False, "With --do_eval: generate the responses and score them with ROUGE-1/2/L.")
