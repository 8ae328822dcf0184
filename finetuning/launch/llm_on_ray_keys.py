"""The keys of intel/llm-on-ray's fine-tuning YAML, one handler each: the suite flags it maps to, or a refusal.

A handler takes ``(reader, "Section.key", value)`` and returns finetune_clm.py flags; it may add a warning line
(``reader.note``) for a key that changes nothing the suite can honour, or raise one :class:`UserError` line
naming the key and the file (``reader.fail``). Keys that need others (device, accelerate_mode, lengths) are
handled together in :mod:`finetuning.launch.llm_on_ray_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetuning.errors import UserError

# llm-on-ray's optimizer spellings that are no Hugging Face `optim` name.
OPTIMIZER_ALIASES = {"adamw": "adamw_torch", "adam": "adamw_torch", "sgd": "sgd"}
DDP_MODES = {"DDP": None, "CPU_DDP": "cpu", "GPU_DDP": "gpu"}
FSDP_MODES = {"FSDP": None, "GPU_FSDP": "gpu"}


@dataclass
class RayPlan:
    """What a config file asks for: the suite's flags, the Ray workers, and lines to show the user."""

    flags: list[str] = field(default_factory=list)
    num_workers: int = 1
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    use_gpu: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class KeyReader:
    """Type checks and error lines that name the key and the file."""

    path: str
    plan: RayPlan

    def fail(self, key: str, message: str) -> UserError:
        return UserError(message, path=self.path, field=key)

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # YAML's true/false are ints to Python; a number field must not accept them.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_names(kinds)}, got {value!r}")
        if int in kinds and float not in kinds and isinstance(value, float):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_names(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def note(self, key: str, message: str) -> None:
        self.plan.notes.append(f"{self.path}: field '{key}': {message}")


def _names(kinds: tuple[type, ...]) -> str:
    words = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return " or ".join(words.get(kind, kind.__name__) for kind in kinds)


def _flag(name: str, kind: type | tuple[type, ...]) -> Callable[[KeyReader, str, Any], list[str]]:
    """A key that is one suite flag of the same meaning; null leaves the suite's default."""

    def handle(reader: KeyReader, key: str, value: Any) -> list[str]:
        if value is None:
            return []
        value = reader.typed(key, value, kind)
        return [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]

    return handle


def _save_strategy(reader: KeyReader, key: str, value: Any) -> list[str]:
    if value is False:  # YAML reads the bare word `no` as false
        value = "no"
    return [] if value is None else ["--save_strategy", reader.typed(key, value, str)]


def _checkpoint_dir(reader: KeyReader, key: str, value: Any) -> list[str]:
    if value in (None, ""):
        return []
    reader.typed(key, value, str)
    reader.note(key, "checkpoints go to output_dir/checkpoint-N each epoch; a rerun resumes from the last one")
    return ["--save_strategy", "epoch"]


def _gpt_base_model(reader: KeyReader, key: str, value: Any) -> list[str]:
    if reader.typed(key, value, bool):
        reader.note(key, "ignored: llm-on-ray pinned an old transformers for GPT-J; this one loads GPT-J natively")
    return []


def _model_config(reader: KeyReader, key: str, value: Any) -> list[str]:
    flags: list[str] = []
    for name, item in (reader.typed(key, value, dict) or {}).items():
        if name == "trust_remote_code":
            flags += _flag("trust_remote_code", bool)(reader, f"{key}.{name}", item)
        elif name in ("use_auth_token", "token"):
            if item not in (None, False):
                raise reader.fail(f"{key}.{name}", "a token is not read from a config file; export HF_TOKEN instead")
        else:
            raise reader.fail(f"{key}.{name}", "unknown key")
    return flags


def _lora_config(reader: KeyReader, key: str, value: Any) -> list[str]:
    if value is None:
        return ["--peft", "none"]  # llm-on-ray fine-tunes every weight without a lora_config
    flags = ["--peft", "lora"]
    names = {"r": ("lora_rank", int), "lora_alpha": ("lora_alpha", int), "lora_dropout": ("lora_dropout", float)}
    for name, item in reader.typed(key, value, dict).items():
        inner = f"{key}.{name}"
        if name == "task_type":
            if item != "CAUSAL_LM":
                raise reader.fail(inner, f"finetune_clm.py trains CAUSAL_LM only, got {item!r}")
        elif name in names:
            flags += _flag(*names[name])(reader, inner, item)
        elif name == "target_modules":
            modules = [item] if isinstance(item, str) else item
            if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
                raise reader.fail(inner, f"expected a list of module names, got {item!r}")
            flags += ["--lora_target_modules", *modules]
        else:
            raise reader.fail(inner, "unknown key")
    return flags


def _ignored_unless(expected: Any, why: str) -> Callable[[KeyReader, str, Any], list[str]]:
    """A key whose only honourable value is ``expected`` (or null); anything else is refused with ``why``."""

    def handle(reader: KeyReader, key: str, value: Any) -> list[str]:
        if value is not None and value != expected:
            raise reader.fail(key, f"{value!r} is not supported: {why}")
        return []

    return handle


def _padding_side(reader: KeyReader, key: str, value: Any) -> list[str]:
    if value == "left":
        reader.note(key, "ignored: batches are padded on the right (with an attention mask, the result is the same)")
    elif value not in (None, "right"):
        raise reader.fail(key, f"expected 'left' or 'right', got {value!r}")
    return []


def _mask_input(reader: KeyReader, key: str, value: Any) -> list[str]:
    return ["--train_on_inputs", "true"] if value is not None and not reader.typed(key, value, bool) else []


def _optimizer(reader: KeyReader, key: str, value: Any) -> list[str]:
    name = reader.typed(key, value, str)
    return ["--optim", OPTIMIZER_ALIASES.get(name.lower(), name)]


def _mixed_precision(reader: KeyReader, key: str, value: Any) -> list[str]:
    choice = "no" if value in (None, False) else reader.typed(key, value, str).lower()
    if choice not in ("no", "bf16", "fp16"):
        raise reader.fail(key, f"expected no, bf16 or fp16, got {value!r}")
    return [] if choice == "no" else [f"--{choice}", "true"]


def _workers(reader: KeyReader, key: str, value: Any) -> list[str]:
    reader.plan.num_workers = reader.typed(key, value, int)
    if reader.plan.num_workers < 1:
        raise reader.fail(key, "needs at least one worker")
    return []


def _resources(reader: KeyReader, key: str, value: Any) -> list[str]:
    for name, amount in reader.typed(key, value, dict).items():
        reader.plan.resources_per_worker[str(name)] = reader.typed(f"{key}.{name}", amount, (int, float))
    return []


GENERAL: dict[str, Callable[[KeyReader, str, Any], list[str]]] = {
    "base_model": _flag("model_name_or_path", str),
    "tokenizer_name": _flag("tokenizer_name", str),
    "gpt_base_model": _gpt_base_model,
    "output_dir": _flag("output_dir", str),
    "checkpoint_dir": _checkpoint_dir,
    "save_strategy": _save_strategy,
    "resume_from_checkpoint": _flag("resume_from_checkpoint", str),
    "report_to": _flag("report_to", str),
    "config": _model_config,
    "lora_config": _lora_config,
    "enable_gradient_checkpointing": _flag("gradient_checkpointing", bool),
}
DATASET: dict[str, Callable[[KeyReader, str, Any], list[str]]] = {
    "train_file": _flag("train_file", str),
    "validation_file": _flag("validation_file", str),
    "validation_split_percentage": _flag("validation_split_percentage", int),
    "group": _flag("dataset_concatenation", bool),
    "max_length": lambda reader, key, value: [],  # with block_size, in _sequence_length
    "block_size": lambda reader, key, value: [],
    "max_source_length": _ignored_unless(None, "finetune_clm.py truncates prompt and response together"),
    "padding_side": _padding_side,
    "truncation_side": _ignored_unless("right", "samples are truncated on the right"),
    "mask_input": _mask_input,
    "mask_response": _ignored_unless(True, "the response and its EOS are always in the loss"),
}
TRAINING: dict[str, Callable[[KeyReader, str, Any], list[str]]] = {
    "optimizer": _optimizer,
    "batch_size": _flag("per_device_train_batch_size", int),
    "epochs": _flag("num_train_epochs", (int, float)),
    "max_train_steps": _flag("max_steps", int),
    "learning_rate": _flag("learning_rate", (int, float)),
    "lr_scheduler": _flag("lr_scheduler_type", str),
    "weight_decay": _flag("weight_decay", (int, float)),
    "mixed_precision": _mixed_precision,
    "gradient_accumulation_steps": _flag("gradient_accumulation_steps", int),
    "logging_steps": _flag("logging_steps", int),
    "seed": _flag("seed", int),
    "num_training_workers": _workers,
    "resources_per_worker": _resources,
    "device": lambda reader, key, value: [],  # with accelerate_mode, in _device_and_mode
    "accelerate_mode": lambda reader, key, value: [],
    "deepspeed_config_file": lambda reader, key, value: [],
}
HANDLERS = {"General": GENERAL, "Dataset": DATASET, "Training": TRAINING}
