"""Folding a LoRA adapter into its base weights, saved as a standalone model that needs no PEFT.

The merged directory gets the run's tokenizer and prompt template too, so ``inference.py --base_model_path``
prompts it exactly as the adapter was trained; prompt-learning adapters cannot be merged and say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from finetuning.data.templates import save_rendering
from finetuning.errors import UserError
from finetuning.inference.loading import LoadedModel
from finetuning.inference.run_files import ADAPTER_CONFIG

logger = logging.getLogger("finetuning")


def check_merge_destination(output_dir: str, *sources: str | None) -> None:
    """Refuse a destination that is a source or already holds a model: before the model loads, and again after."""
    output = Path(output_dir)
    if output.resolve() in {Path(source).resolve() for source in sources if source}:
        raise UserError(
            "is the base or adapter directory: choose a new directory", path=output_dir, field="merge_and_save"
        )
    if any((output / name).exists() for name in ("config.json", ADAPTER_CONFIG)):
        raise UserError("already holds a model: choose a new directory", path=output_dir, field="merge_and_save")


def merge_and_save(loaded: LoadedModel, output_dir: str) -> Path:
    """Fold the adapter into the base weights and save a model that needs neither PEFT nor the adapter."""
    from peft import PeftModel

    if not isinstance(loaded.model, PeftModel):
        raise UserError(
            "nothing to merge: --merge_and_save needs an adapter (--peft_model_path)", field="merge_and_save"
        )
    peft_config = loaded.model.peft_config[loaded.model.active_adapter]
    if peft_config.is_prompt_learning or getattr(peft_config, "is_adaption_prompt", False):
        method = getattr(peft_config.peft_type, "value", str(peft_config.peft_type))
        raise UserError(
            f"a {method} adapter cannot be merged: prompt-learning adapters (P-tuning, prefix, prompt "
            "tuning, LLaMA-Adapter) add virtual tokens or prompts at run time instead of changing "
            "weights; serve the base with --peft_model_path instead",
            field="merge_and_save",
        )
    check_merge_destination(output_dir, loaded.base_path, loaded.adapter_path)
    output = Path(output_dir)
    try:
        merged = loaded.model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError) as error:
        raise UserError(f"cannot merge the adapter: {error}".splitlines()[0], field="merge_and_save") from None
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output)  # safetensors: transformers 5 writes nothing else
    loaded.tokenizer.save_pretrained(output)
    save_rendering(output, loaded.rendering)
    loaded.model = merged
    logger.info("merged model saved to %s", output)
    return output
