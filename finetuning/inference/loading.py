"""Loading a finished run for inference: the model, its adapter, tokenizer and prompt template.

A run is a base (or full fine-tuned / merged) model and/or an adapter directory. Everything that decides
what the model sees is taken from what training saved: the adapter's base from ``adapter_config.json``, the
tokenizer (with any added tokens) from the adapter directory, the prompt template from
``prompt_template.json``. Weights come from safetensors only, unless ``--allow_pickle`` says otherwise;
``torch.load`` of a pickle runs arbitrary code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.data.templates import Rendering
from finetuning.errors import UserError
from finetuning.inference.run_files import resolve_paths, resolve_rendering

logger = logging.getLogger("finetuning")


@dataclass
class LoadedModel:
    """A model ready to generate, with everything needed to prompt it as it was trained."""

    model: Any
    tokenizer: Any
    rendering: Rendering
    base_path: str
    adapter_path: str | None
    device: Any

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def resolve_device(name: str = "auto") -> Any:
    """CUDA, then XPU, then the CPU: one code path whichever is there."""
    import torch

    xpu = getattr(torch, "xpu", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "xpu": bool(xpu is not None and xpu.is_available())}
    if name == "auto":
        name = next(device for device in ("cuda", "xpu", "cpu") if available[device])
    if not available.get(name, False):
        raise UserError(f"no {name} device is available here", field="device")
    return torch.device(name)


def resolve_dtype(name: str | None, device: Any) -> Any:
    """float32 on the CPU (bfloat16 matmuls there are slow on most CPUs), bfloat16 on accelerators."""
    import torch

    if name is not None:
        return getattr(torch, name)
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def _model_arguments(base: str, tokenizer_name: str | None, trust_remote_code: bool, allow_pickle: bool) -> Any:
    from finetuning.model.arguments import ModelArguments

    return ModelArguments(
        model_name_or_path=base,
        tokenizer_name=tokenizer_name,
        trust_remote_code=trust_remote_code,
        allow_pickle_weights=allow_pickle,
    )


@contextmanager
def _named_as_inference_flags() -> Iterator[None]:
    """modeling.py's errors name the training flag (--model_name_or_path); name the one the user passed."""
    try:
        yield
    except UserError as error:
        if error.field == "model_name_or_path":
            error.field = "base_model_path"
        raise


def load_for_inference(args: Any) -> LoadedModel:
    """Load the model, tokenizer and prompt template that ``args`` (an ``InferenceArguments``) describe."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from finetuning.model import loading as modeling

    base, adapter = resolve_paths(args.base_model_path, args.peft_model_path, args.allow_pickle)
    rendering = resolve_rendering(args.prompt_template, args.chat_template, adapter, base)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    tokenizer_name = args.tokenizer_name
    if tokenizer_name is None and adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        tokenizer_name = adapter
    model_args = _model_arguments(base, tokenizer_name, args.trust_remote_code, args.allow_pickle)
    with _named_as_inference_flags():
        config = modeling.load_config(model_args)
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        # decoder-only models continue the prompt's last token, so a batch's padding must go to the left
        tokenizer = modeling.load_tokenizer(model_args, padding_side="right" if encoder_decoder else "left")
        model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
        model = modeling.load_model(model_args, model_class, config=config, dtype=dtype, tokenizer=tokenizer)
    if adapter is not None:
        model = _attach_adapter(model, adapter)
    model.to(device)
    model.eval()
    logger.info(
        "loaded %s%s (%s, %s) on %s; prompts: %s",
        base,
        f" + adapter {adapter}" if adapter else "",
        config.model_type,
        str(dtype).removeprefix("torch."),
        device,
        f"chat, {rendering.chat_template or 'the tokenizer'}'s template" if rendering.chat else rendering.template.name,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        rendering=rendering,
        base_path=base,
        adapter_path=adapter,
        device=device,
    )


def _attach_adapter(model: Any, adapter: str) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=False, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        # "Error(s) in loading state_dict ...:" says nothing by itself; its next line names the mismatch
        message = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        raise UserError(
            f"cannot load the adapter onto this base (was it trained on it?): {message}",
            path=adapter,
            field="peft_model_path",
        ) from None
