"""Every command-line flag of the fine-tuning scripts, declared once as dataclasses.

``HfArgumentParser`` reads these, so a flag, a JSON file and a YAML file are three spellings of one
configuration, and each field's ``help`` is the documentation. ``transformers.TrainingArguments`` supplies
everything it already has; the subclasses here add only the flags that older ``transformers`` releases had
and that users' command lines still pass.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

from finetuning.errors import UserError

PEFT_METHODS = ("lora", "ptun", "prefix", "prompt", "llama_adapter", "ia3", "none")
TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")

_Dataclass = TypeVar("_Dataclass")


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from, and how to load them."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model directory (or hub name, where a hub is reachable) to fine-tune."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config to use instead of the model's own (path or name)."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to use instead of the model's own (path or name)."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and the tokenized-data cache are stored."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Model version to use: a branch name, tag name or commit id."}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use the Rust ('fast') tokenizer where the model has one."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run Python code shipped inside the model directory. Off by default: only for models you trust."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a model that has only pickled weights (pytorch_model.bin). Off by default: unpickling can "
            "run code, so only safetensors weights are loaded unless you trust the model's source."
        },
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype to load the model weights in. Default: bfloat16 for a frozen base under --bf16 with a "
            "PEFT method (halves memory, adapters stay float32), else float32.",
            "choices": TORCH_DTYPES,
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'sdpa', 'eager', 'flash_attention_2', ... (default: transformers' choice)."
        },
    )


@dataclass
class DataArguments:
    """Which data to train on and how to turn it into token sequences."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: Alpaca JSON/JSONL (instruction, input, output), Dolly JSONL "
            "(instruction, context, response), chat JSONL (messages) or CSV."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets.save_to_disk` directory, or a hub data set name where a hub is reachable."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "With --do_eval and no validation data: the percentage of the training data held out."},
    )
    max_seq_length: int = field(
        default=512,
        metadata={
            "help": "Longest token sequence; longer samples are truncated (and counted), packed blocks have this size."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training samples (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation samples."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenize the data (default: one)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenize again even if a cached result exists."})
    special_tokens: list[str] | None = field(
        default=None, metadata={"help": "Extra special tokens to add to the tokenizer (their embeddings are trained)."}
    )
    train_on_inputs: bool = field(
        default=False,
        metadata={"help": "Also train on the prompt tokens. Default: only the response (and its EOS) is in the loss."},
    )
    dataset_concatenation: bool = field(
        default=False,
        metadata={"help": "Pack several samples into each max_seq_length block; samples never attend to each other."},
    )
    prompt_template: str = field(
        default="alpaca", metadata={"help": "Prompt template for instruction records (see finetuning/templates.py)."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat records: a named template from finetuning/templates.py instead of the tokenizer's own."
        },
    )


@dataclass
class Seq2SeqDataArguments(DataArguments):
    """Encoder-decoder models truncate the prompt (encoder) and the response (decoder) separately."""

    max_source_length: int = field(default=512, metadata={"help": "Longest encoder input (the prompt), in tokens."})
    max_target_length: int = field(default=256, metadata={"help": "Longest decoder target (the response), in tokens."})


@dataclass
class PeftArguments:
    """Which parameter-efficient method to train, and its sizes."""

    peft: str = field(
        default="lora",
        metadata={
            "help": "lora, ptun (P-tuning), prefix, prompt (prompt tuning), llama_adapter, ia3, or none "
            "(full fine-tuning).",
            "choices": PEFT_METHODS,
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha/r)."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the LoRA input. 0 (PEFT's default) draws no mask per adapted layer: 1.09x faster "
            "and 16.6 GiB less on a 7B GPU run, 3.6x faster on CPUs (docs/performance.md). The old scripts used 0.05."
        },
    )
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt (default: PEFT's choice for the architecture)."}
    )
    lora_all_linear: bool = field(default=False, metadata={"help": "Adapt every linear layer except the output head."})
    num_virtual_tokens: int = field(
        default=10, metadata={"help": "Virtual tokens for P-tuning, prefix tuning and prompt tuning."}
    )
    ptun_hidden_size: int = field(default=1024, metadata={"help": "Hidden size of the P-tuning prompt encoder."})
    adapter_layers: int = field(
        default=30, metadata={"help": "LLaMA-Adapter: how many top layers get adaption prompts (capped at the depth)."}
    )
    adapter_len: int = field(default=10, metadata={"help": "LLaMA-Adapter: adaption prompt length."})


@dataclass
class SpeedFlags:
    """Switches of the project's own speed-ups (finetuning/acceleration.py)."""

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
    """Switches of finetuning/reliability.py."""

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
    from finetuning.distributed import device_for_local_rank

    return device_for_local_rank(0, use_cpu=use_cpu).split(":")[0]


def _start_backend(requested: str | None, device_type: str, timeout_s: float) -> str | None:
    """The ``ddp_backend`` to hand transformers: None for one process, where a backend means nothing (old
    releases ignored it too). oneCCL is started here because accelerate accepts only gloo/mpi on the CPU
    and reuses a process group that already exists."""
    from finetuning.distributed import init_process_group, resolve_ddp_backend, setup_launch_environment

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
class FinetuneTrainingArguments(SpeedFlags, ReliabilityFlags, LegacyTrainingFlags, TrainingArguments):
    """``TrainingArguments`` plus the legacy flags and the project's speed switches."""


@dataclass
class Seq2SeqFinetuneTrainingArguments(SpeedFlags, ReliabilityFlags, LegacyTrainingFlags, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the legacy flags and the project's speed switches."""


def _config_to_flags(config: dict[str, Any]) -> list[str]:
    """Spell a config file's settings as flags, so that flags given after them override them."""
    flags: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        rendered = [
            json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v) for v in values
        ]
        flags += [f"--{key}", *rendered]
    return flags


def _read_config_file(path: str) -> dict[str, Any]:
    config_path = Path(path)
    if not config_path.is_file():
        raise UserError("config file not found", path=path)
    try:
        text = config_path.read_text(encoding="utf-8")
        if config_path.suffix == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"cannot parse config file: {error}".splitlines()[0], path=path) from None
    if not isinstance(config, dict):
        raise UserError("a config file must hold a mapping of flag names to values", path=path)
    return config


def expand_config_file(argv: list[str]) -> list[str]:
    """Turn ``[config.yaml, --flag, v]`` or ``[--config, config.yaml, ...]`` into plain flags (file first)."""
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        return _config_to_flags(_read_config_file(argv[0])) + argv[1:]
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise UserError("--config needs a file path", field="config")
        rest = argv[:position] + argv[position + 2 :]
        return _config_to_flags(_read_config_file(argv[position + 1])) + rest
    return argv


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse flags (optionally after a leading JSON/YAML config file) into one instance of each dataclass."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=expand_config_file(argv)))
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None
