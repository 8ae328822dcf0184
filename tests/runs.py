"""Deterministic training flags and comparisons of saved runs, shared by the distributed, multinode and
end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FLOAT32_TOLERANCE = 1e-5
# Deterministic under every launcher: no dropout, float32 (no --bf16), fixed seed, data in file order.
DETERMINISTIC_LORA = (
    "--do_train",
    "--peft",
    "lora",
    "--lora_dropout",
    "0",
    "--max_seq_length",
    "128",
    "--num_train_epochs",
    "1",
    "--learning_rate",
    "1e-2",
    "--seed",
    "7",
    "--train_sampling_strategy",
    "sequential",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--log_level",
    "info",
)


def trainer_state(output: Path) -> dict:
    return json.loads((output / "trainer_state.json").read_text())


def logged_losses(output: Path) -> list[float]:
    return [entry["loss"] for entry in trainer_state(output)["log_history"] if "loss" in entry]


def adapter_difference(left: Path, right: Path) -> float:
    """Largest absolute difference between two saved adapters (which must have the same tensors)."""
    from safetensors.torch import load_file

    a, b = load_file(str(left / "adapter_model.safetensors")), load_file(str(right / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    return max((a[name] - b[name]).abs().max().item() for name in a)


def t5_without_dropout(model: Path, copy_to: Path | None = None) -> Path:
    """The T5 in ``model`` (or a copy of it in ``copy_to``) with its own dropout off: every rank then runs the
    forward one process runs, and a tiny model memorizes in few steps."""
    import shutil

    from transformers import AutoConfig

    if copy_to is not None:
        shutil.copytree(model, copy_to)
        model = copy_to
    config = AutoConfig.from_pretrained(model)
    config.dropout_rate = 0.0
    config.save_pretrained(model)
    return model


def lora_flags(model: Path, train_file: Path, batch: int) -> list[object]:
    """A deterministic LoRA run of ``model`` on ``train_file`` with ``batch`` per device (no --output_dir)."""
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        train_file,
        "--per_device_train_batch_size",
        batch,
        *DETERMINISTIC_LORA,
    ]


def assert_one_job_like_one_process(output: Path, one_batch1: Path, one_batch4: Path, log: str) -> None:
    """``output`` is one job of 4 ranks (global batch 4): a quarter of the steps of one process with batch 1,
    and the adapter and per-step losses of one process with batch 4."""
    import pytest

    assert trainer_state(one_batch1)["global_step"] == 24
    assert trainer_state(output)["global_step"] == 24 // 4
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    difference = adapter_difference(output, one_batch4)
    print(f"adapter max-abs difference to one process with batch 4: {difference:.3g}")
    assert difference <= FLOAT32_TOLERANCE
    assert logged_losses(output) == pytest.approx(logged_losses(one_batch4), abs=FLOAT32_TOLERANCE)


def run_start(base_dir: Path, output: Path, model_class: Any, task_type: str) -> Any:
    """The float32 model the run saved in ``output`` started from: the base with its untrained adapter (or the
    base alone for full fine-tuning), rebuilt as the fine-tune scripts build it. They seed every generator while
    loading the base (finetuning.model.loading.load_model) and PEFT initialises the adapter next, so the same
    steps here give the same start; the base's dtype does not change what the seeded generators give PEFT."""
    import dataclasses

    import torch
    from transformers import AutoConfig, set_seed

    from finetuning.model.arguments import PeftArguments
    from finetuning.model.peft_setup import apply_peft, build_peft_config

    arguments = json.loads((output / "finetune_args.json").read_text())
    fields = [field.name for field in dataclasses.fields(PeftArguments) if field.name in arguments]
    peft_args = PeftArguments(**{name: arguments[name] for name in fields})  # seq2seq has no llama_adapter flags
    peft_config = build_peft_config(peft_args, AutoConfig.from_pretrained(base_dir), task_type=task_type)
    set_seed(arguments["seed"])
    return apply_peft(model_class.from_pretrained(base_dir, dtype=torch.float32), peft_config).eval()


def save_lora_adapter(base_path: Path, adapter_dir: Path, *, init_lora_weights: bool = False) -> None:
    """A LoRA adapter of ``base_path`` with random factors scaled up, so that it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # random LoRA factors are small: scale them so the adapter changes the answers
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(20)
    peft_model.save_pretrained(adapter_dir)
