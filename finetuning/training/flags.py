"""The project's own training flags, apart from ``transformers`` so that ``--help`` can list them at once.

Speed and reliability switches, and the flags that older ``transformers`` releases had and users' command lines
still pass. :mod:`finetuning.training.arguments` mixes them into ``TrainingArguments``; this module imports
nothing heavy, so the scripts print their grouped ``--help`` without loading torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetuning.cli import flag


@dataclass
class SpeedFlags:
    """Switches of the project's own speed-ups (finetuning/model/acceleration.py)."""

    auto_optimize: bool = flag(
        True,
        "Apply the device's safe speed-ups (the project's fused LoRA path; LoRA inputs kept in bf16; on CUDA, "
        "packed rows through FlashAttention's variable-length kernel and Liger kernels when installed). Results "
        "change only by rounding; False gives the plain Trainer + PEFT path.",
    )
    # transformers types this field ``str | bool`` and its parser then takes only booleans, so 'non_padding',
    # the one that measures real throughput, could not be asked for from the command line.
    include_num_input_tokens_seen: str = flag(
        "no",
        "Count the input tokens trained on ('non_padding': without padding; 'all'; 'no'). When on, the "
        "train metrics include train_steady_tokens_per_second, summed over ranks, first steps left out.",
        choices=["no", "non_padding", "all"],
    )
    use_ipex: bool = flag(
        False,
        "Intel CPUs/GPUs: pass the model and optimizer through ipex.optimize. Needs "
        "intel-extension-for-pytorch built for this torch (requirements-intel.txt); without it, one warning.",
    )


@dataclass
class ReliabilityFlags:
    """Switches of finetuning/training/reliability.py."""

    skip_nonfinite_batches: bool = flag(
        False,
        "When a batch's loss is NaN or inf, skip that step's weight update (with a warning) instead of "
        "stopping the run with an error; the run still stops after 10 such steps in a row.",
    )


@dataclass
class ReportFlags:
    """Where the run's logs go besides the run report (finetuning/training/report.py), which is always written."""

    # transformers' default is 'none'; None here means "not set", so TensorBoard can be the default where installed.
    report_to: None | str | list[str] = flag(  # noqa: RUF036 (transformers parses this order only)
        None,
        "Where to send the logs: 'tensorboard', 'wandb', 'mlflow', ..., 'all' or 'none'. Default: "
        "'tensorboard' (logs in OUTPUT_DIR/runs) when tensorboard or tensorboardX is installed, else 'none'. "
        "The run report (loss_curve.png and the README.md model card) is written in every case.",
    )


@dataclass
class LegacyTrainingFlags:
    """Flags that ``transformers`` 5 dropped but the command lines in use still pass, with their old meaning."""

    evaluation_strategy: str | None = flag(None, "Old name of --eval_strategy ('no', 'steps', 'epoch').")
    no_cuda: bool = flag(False, "Old name of --use_cpu: train on the CPU.")
    xpu_backend: str | None = flag(None, "Old name of --ddp_backend (e.g. 'ccl', 'gloo', 'mpi').")
    group_by_length: bool = flag(False, "Batch samples of similar length together (less padding).")
    overwrite_output_dir: bool = flag(
        False,
        "Start over in an output_dir that holds a finished run or checkpoints. Without it a finished "
        "run is never overwritten and an interrupted one resumes.",
    )
    warmup_ratio: float | None = flag(
        None, "Old spelling of a fractional --warmup_steps: warm up over this share of steps."
    )


# The TrainingArguments flags a run usually sets, named (not described) by the quick --help.
COMMON_TRAINING_FLAGS = (
    "output_dir",
    "do_train",
    "do_eval",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "bf16",
    "gradient_checkpointing",
    "logging_steps",
    "eval_strategy",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "log_level",
    "seed",
)
PROJECT_HELP_GROUPS = (
    ("speed", SpeedFlags),
    ("reliability", ReliabilityFlags),
    ("run report", ReportFlags),
    ("old flags (still accepted)", LegacyTrainingFlags),
)
