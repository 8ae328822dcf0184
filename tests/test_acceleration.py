"""The default speed-ups change results only by rounding, and stay correct where autocast is off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetuning.acceleration import keep_lora_inputs_in_compute_dtype, optimize_for_training


def lora_model(tiny_tokenizer, dtype):
    import peft
    import transformers

    from finetuning.tiny_models import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer), dtype=dtype)
    config = peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config).eval()


def batch(tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("The capital of Norway is Oslo.")["input_ids"]])
    return {"input_ids": ids, "labels": ids}


def loss_of(model, inputs, *, autocast: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**inputs).loss.float().item()


def test_bf16_base_under_autocast_gives_the_plain_paths_loss(tiny_tokenizer):
    inputs = batch(tiny_tokenizer)
    plain = loss_of(lora_model(tiny_tokenizer, torch.bfloat16), inputs, autocast=True)
    fast_model = lora_model(tiny_tokenizer, torch.bfloat16)
    assert keep_lora_inputs_in_compute_dtype(fast_model) == 14  # 7 linear layers x 2 decoder layers
    assert loss_of(fast_model, inputs, autocast=True) == pytest.approx(plain, abs=2e-2)  # bf16 tolerance


def test_without_autocast_the_cast_stays_and_nothing_breaks(tiny_tokenizer):
    """A pure-bf16 forward (or a DataParallel replica thread, where autocast is off) still works."""
    inputs = batch(tiny_tokenizer)
    plain = loss_of(lora_model(tiny_tokenizer, torch.bfloat16), inputs, autocast=False)
    fast_model = lora_model(tiny_tokenizer, torch.bfloat16)
    keep_lora_inputs_in_compute_dtype(fast_model)
    assert loss_of(fast_model, inputs, autocast=False) == pytest.approx(plain, abs=1e-6)


def test_optimize_for_training_is_off_when_disabled_and_skips_liger_on_cpu(tiny_tokenizer):
    model = lora_model(tiny_tokenizer, torch.bfloat16)
    args = SimpleNamespace(
        bf16=True, fp16=False, use_cpu=True, use_liger_kernel=False, world_size=1, ddp_find_unused_parameters=None
    )
    assert optimize_for_training(model, args, enabled=False) == []
    assert optimize_for_training(model, args, enabled=True) == ["LoRA inputs kept in the autocast dtype"]
    assert args.use_liger_kernel is False
    args.world_size = 2
    assert "DDP without the unused-parameter search" in optimize_for_training(model, args, enabled=True)
    assert args.ddp_find_unused_parameters is False
