"""Building the PEFT configuration for ``--peft`` and wrapping the model with it.

:func:`build_peft_config` returns ``None`` for full fine-tuning, so callers need no branches. Methods an
architecture cannot take are refused before any weights are loaded, with one line saying why.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from finetuning.errors import UserError

logger = logging.getLogger(__name__)

# Prompt-learning methods prepend virtual tokens inside PEFT, which drops position ids: packed blocks would
# lose their per-sample masks, so the data pipeline pads these methods' samples instead of packing them.
PROMPT_LEARNING_METHODS = ("ptun", "prefix", "prompt")


def _lora_targets(peft_args: Any, model_type: str) -> list[str] | str | None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if peft_args.lora_target_modules:
        return list(peft_args.lora_target_modules)
    if peft_args.lora_all_linear:
        return "all-linear"
    if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        raise UserError(
            f"PEFT has no default LoRA targets for '{model_type}': pass --lora_target_modules or --lora_all_linear",
            field="lora_target_modules",
        )
    return None


def build_peft_config(peft_args: Any, model_config: Any, *, task_type: str, new_token_ids: list[int] | None = None):
    """The ``peft`` config for the chosen method, or ``None`` for full fine-tuning."""
    import peft

    method = peft_args.peft
    model_type = getattr(model_config, "model_type", "")
    if method == "none":
        return None
    if method == "lora":
        return peft.LoraConfig(
            r=peft_args.lora_rank,
            lora_alpha=peft_args.lora_alpha,
            lora_dropout=peft_args.lora_dropout,
            target_modules=_lora_targets(peft_args, model_type),
            trainable_token_indices=new_token_ids or None,
            bias="none",
            task_type=task_type,
        )
    if method == "ptun":
        return peft.PromptEncoderConfig(
            num_virtual_tokens=peft_args.num_virtual_tokens,
            encoder_hidden_size=peft_args.ptun_hidden_size,
            task_type=task_type,
        )
    if method == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=peft_args.num_virtual_tokens, task_type=task_type)
    if method == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=peft_args.num_virtual_tokens, task_type=task_type)
    if method == "ia3":
        return peft.IA3Config(task_type=task_type)
    if method == "llama_adapter":
        from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

        if model_type not in TRANSFORMERS_MODEL_CONFIG:
            supported = ", ".join(sorted(TRANSFORMERS_MODEL_CONFIG))
            raise UserError(f"llama_adapter supports only {supported}, not '{model_type}'", field="peft")
        depth = getattr(model_config, "num_hidden_layers", None) or model_config.n_layer
        layers = min(peft_args.adapter_layers, depth)
        if layers < peft_args.adapter_layers:
            logger.warning("--adapter_layers %d capped at the model's %d layers", peft_args.adapter_layers, depth)
        return peft.AdaptionPromptConfig(adapter_layers=layers, adapter_len=peft_args.adapter_len, task_type=task_type)
    raise UserError(f"unknown method '{method}'", field="peft")


def apply_peft(model: Any, peft_config: Any, *, gradient_checkpointing: bool = False) -> Any:
    """Wrap ``model`` with its adapters (or leave it whole for full fine-tuning) and log what trains."""
    if peft_config is None:
        return model
    import peft

    if gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    try:
        with warnings.catch_warnings():
            # PEFT reads transformers' deprecated is_gradient_checkpointing alias: a FutureWarning on every run
            # that says nothing about the user's run.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            wrapped = peft.get_peft_model(model, peft_config)
    except (ValueError, TypeError, AttributeError, NotImplementedError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        method = type(peft_config).__name__
        raise UserError(f"{method} cannot be applied to '{model.config.model_type}': {message}", field="peft") from None
    for config in wrapped.peft_config.values():
        # adapter_config.json names the base; a relative path would mean nothing from another directory
        base = config.base_model_name_or_path
        if base and Path(base).expanduser().is_dir():
            config.base_model_name_or_path = str(Path(base).expanduser().resolve())
    return wrapped


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    return trainable, total
