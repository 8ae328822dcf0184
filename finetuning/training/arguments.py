"""The training flags: ``transformers.TrainingArguments`` plus the project's switches and the old flags.

``TrainingArguments`` supplies everything it already has; the subclasses here add only the project's speed and
reliability switches and the flags that older ``transformers`` releases had and users' command lines still
pass. Model and data flags live beside the code that reads them (:mod:`finetuning.model.arguments`,
:mod:`finetuning.data.arguments`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from finetuning.errors import UserError


@dataclass
class SpeedFlags:
    """Switches of the project's own speed-ups (finetuning/model/acceleration.py)."""

    auto_optimize: bool = field(
        default=True,
        metadata={
            "help": "Apply the device's safe speed-ups (LoRA inputs kept in bf16; Liger kernels on CUDA when "
            "installed). Results change only by rounding; False gives the plain Trainer + PEFT path."
        },
    )
    # transformers types this field ``str | bool`` and its parser then takes only booleans, so 'non_padding',
    # the one that measures real throughput, could not be asked for from the command line.
    include_num_input_tokens_seen: str = field(
        default="no",
        metadata={
            "help": "Count the input tokens trained on ('non_padding': without padding; 'all'; 'no'). When on, the "
            "train metrics include train_steady_tokens_per_second, summed over ranks, first steps left out.",
            "choices": ["no", "non_padding", "all"],
        },
    )


@dataclass
class ReliabilityFlags:
    """Switches of finetuning/training/reliability.py."""

    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={
            "help": "When a batch's loss is NaN or inf, skip that step's weight update (with a warning) instead of "
            "stopping the run with an error; the run still stops after 10 such steps in a row."
        },
    )


@dataclass
class LegacyTrainingFlags:
    """Flags that ``transformers`` 5 dropped but the command lines in use still pass, with their old meaning."""

    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Old name of --eval_strategy ('no', 'steps', 'epoch')."}
    )
    no_cuda: bool = field(default=False, metadata={"help": "Old name of --use_cpu: train on the CPU."})
    xpu_backend: str | None = field(
        default=None, metadata={"help": "Old name of --ddp_backend (e.g. 'ccl', 'gloo', 'mpi')."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch samples of similar length together (less padding)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a finished run or checkpoints. Without it a finished "
            "run is never overwritten and an interrupted one resumes."
        },
    )
    use_ipex: bool = field(
        default=False, metadata={"help": "Use intel_extension_for_pytorch when installed and matching torch."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "Old spelling of a fractional --warmup_steps: warm up over this share of steps."},
    )

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.no_cuda:
            self.use_cpu = True
        if self.warmup_ratio is not None:
            self.warmup_steps = self.warmup_ratio
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        device_type = _device_type(self.use_cpu)
        if device_type == "cpu":
            # Without an accelerator say so: transformers refuses --bf16 otherwise (the old scripts' "--bf16 on
            # Sapphire Rapids" means bf16 autocast on the CPU), and accelerate starts no CPU data-parallel job.
            self.use_cpu = True
        if self.output_dir is None:
            raise UserError("--output_dir is required", field="output_dir")
        self.ddp_backend = _start_backend(self.ddp_backend or self.xpu_backend, device_type, self.ddp_timeout)
        super().__post_init__()


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


@dataclass
class PredictionFlags:
    """``--do_predict`` for causal LMs: the decoding settings ``Seq2SeqTrainingArguments`` has for seq2seq."""

    generation_max_length: int = field(
        default=128, metadata={"help": "--do_predict: most new tokens generated per answer."}
    )
    generation_num_beams: int = field(default=1, metadata={"help": "--do_predict: beam search width; 1: none."})


@dataclass
class FinetuneTrainingArguments(SpeedFlags, ReliabilityFlags, LegacyTrainingFlags, PredictionFlags, TrainingArguments):
    """``TrainingArguments`` plus the legacy flags, ``--do_predict``'s decoding and the project's speed switches."""


@dataclass
class Seq2SeqFinetuneTrainingArguments(SpeedFlags, ReliabilityFlags, LegacyTrainingFlags, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the legacy flags and the project's speed switches."""
