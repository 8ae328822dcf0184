"""Map an intel/llm-on-ray fine-tuning YAML (either schema generation) onto finetune_clm.py flags and Ray workers.

Their files have three sections, ``General``, ``Dataset`` and ``Training``. Every key is either mapped onto the
suite's own flag, accepted with one warning line (``notes``) where it changes nothing the suite can honour, or
refused with one :class:`UserError` line naming the key and the file. The earlier generation writes
``device: CPU|GPU``, ``accelerate_mode: CPU_DDP|GPU_DDP|GPU_FSDP``, ``checkpoint_dir`` and ``optimizer: AdamW``;
the traps of both (YAML's ``save_strategy: no`` is the boolean false, ``deepspeed_config_file: ''`` means none)
are handled here. Pure: takes the parsed file, imports nothing of Ray or torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from finetuning.launch.llm_on_ray_keys import DDP_MODES, FSDP_MODES, HANDLERS, KeyReader, RayPlan

SECTIONS = ("General", "Dataset", "Training")


def is_llm_on_ray_config(config: dict[str, Any]) -> bool:
    """True for a file with llm-on-ray's sections (a finetune_clm.py config holds flag names instead)."""
    return bool(set(config) & set(SECTIONS))


def map_llm_on_ray_config(config: dict[str, Any], path: str) -> RayPlan:
    """The plan for a parsed llm-on-ray file; ``path`` names the file in every error and note."""
    reader = KeyReader(path, RayPlan())
    for section, keys in config.items():
        if section not in HANDLERS:
            raise reader.fail(str(section), f"unknown section; llm-on-ray files have {', '.join(SECTIONS)}")
        for key, value in reader.typed(section, keys or {}, dict).items():
            handler = HANDLERS[section].get(key)
            if handler is None:
                raise reader.fail(f"{section}.{key}", "unknown key")
            reader.plan.flags += handler(reader, f"{section}.{key}", value)
    general, dataset, training = (config.get(name) or {} for name in SECTIONS)
    if not general.get("base_model"):
        raise reader.fail("General.base_model", "is required")
    if "lora_config" not in general:
        reader.plan.flags += ["--peft", "none"]
    reader.plan.flags += ["--do_train", *_evaluation(dataset), *_sequence_length(reader, dataset)]
    reader.plan.flags += _device_and_mode(reader, training)
    return reader.plan


def _evaluation(dataset: dict[str, Any]) -> list[str]:
    """llm-on-ray evaluates on validation_file, else on validation_split_percentage of the training data."""
    held_out = dataset.get("validation_split_percentage") or 0
    return ["--do_eval"] if dataset.get("validation_file") or held_out > 0 else []


def _sequence_length(reader: KeyReader, dataset: dict[str, Any]) -> list[str]:
    """One length: packed blocks are block_size long (group: true), padded samples max_length."""
    max_length = reader.typed("Dataset.max_length", dataset.get("max_length", 512), int)
    if not dataset.get("group"):
        return ["--max_seq_length", str(max_length)]
    block_size = reader.typed("Dataset.block_size", dataset.get("block_size", max_length), int)
    if block_size != max_length:
        reader.note("Dataset.max_length", f"samples are truncated at block_size {block_size}, not at {max_length}")
    return ["--max_seq_length", str(block_size)]


def _device_and_mode(reader: KeyReader, training: dict[str, Any]) -> list[str]:
    """Device (cpu|gpu in either case; hpu refused) and accelerate_mode, which the earlier generation requires."""
    device = reader.typed("Training.device", training.get("device", "cpu"), str).lower()
    if device == "hpu":
        raise reader.fail("Training.device", "hpu (Gaudi) is not supported; use cpu or gpu")
    if device not in ("cpu", "gpu"):
        raise reader.fail("Training.device", f"expected cpu or gpu, got {training['device']!r}")
    mode = reader.typed("Training.accelerate_mode", training.get("accelerate_mode", "DDP"), str)
    implied = {**DDP_MODES, **FSDP_MODES}.get(mode, "") if mode != "DEEPSPEED" else None
    if implied == "":
        choices = ", ".join([*DDP_MODES, *FSDP_MODES, "DEEPSPEED"])
        raise reader.fail("Training.accelerate_mode", f"expected one of {choices}, got {mode!r}")
    if implied is not None and implied != device:
        raise reader.fail("Training.accelerate_mode", f"{mode} runs on {implied}, but Training.device is {device}")
    reader.plan.use_gpu = device == "gpu"
    if not reader.plan.use_gpu and reader.plan.resources_per_worker.get("GPU"):
        raise reader.fail("Training.resources_per_worker.GPU", "asks for GPUs, but Training.device is cpu")
    if reader.plan.use_gpu:
        reader.plan.resources_per_worker.setdefault("GPU", 1)
    flags = [] if reader.plan.use_gpu else ["--use_cpu", "true"]
    if mode in FSDP_MODES:
        flags += ["--fsdp", "full_shard auto_wrap"]
    deepspeed = training.get("deepspeed_config_file") or None  # '' means none
    if mode == "DEEPSPEED":
        if importlib.util.find_spec("deepspeed") is None:
            raise reader.fail("Training.accelerate_mode", "DEEPSPEED needs deepspeed installed (pip install deepspeed)")
        if deepspeed is None:
            raise reader.fail("Training.deepspeed_config_file", "DEEPSPEED needs a DeepSpeed JSON config file")
        flags += ["--deepspeed", str(Path(reader.typed("Training.deepspeed_config_file", deepspeed, str)))]
    elif deepspeed is not None:
        reader.note("Training.deepspeed_config_file", f"ignored: accelerate_mode is {mode}, not DEEPSPEED")
    return flags
