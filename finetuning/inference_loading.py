"""Loading a finished run for inference, and merging a LoRA adapter into a standalone model.

A run is a base (or full fine-tuned / merged) model and/or an adapter directory. Everything that decides
what the model sees is taken from what training saved: the adapter's base from ``adapter_config.json``, the
tokenizer (with any added tokens) from the adapter directory, the prompt template from
``prompt_template.json``. Weights come from safetensors only, unless ``--allow_pickle`` says otherwise;
``torch.load`` of a pickle runs arbitrary code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.errors import UserError
from finetuning.templates import TEMPLATE_FILE, PromptTemplate, get_template, load_template_name, save_template_name

logger = logging.getLogger("finetuning")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
DEFAULT_TEMPLATE = "alpaca"


@dataclass
class LoadedModel:
    """A model ready to generate, with everything needed to prompt it as it was trained."""

    model: Any
    tokenizer: Any
    template: PromptTemplate
    chat_template: str | None
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


def _looks_local(name: str) -> bool:
    """Anything but an ``owner/name`` hub id that is not a local path: a typo'd directory must fail at once,
    not after the hub client's retries."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the adapter config: {error}".splitlines()[0], path=str(path)) from None
    if not isinstance(config, dict):
        raise UserError("expected a JSON object", path=str(path))
    return config


def _check_adapter_dir(adapter_path: str, allow_pickle: bool) -> Path:
    adapter_dir = Path(adapter_path)
    if not adapter_dir.is_dir():
        raise UserError("no such adapter directory", path=adapter_path, field="peft_model_path")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        hint = (
            " (it holds a full model: pass it as --base_model_path)" if (adapter_dir / "config.json").is_file() else ""
        )
        raise UserError(
            f"no {ADAPTER_CONFIG}: not an adapter directory{hint}", path=adapter_path, field="peft_model_path"
        )
    if not (adapter_dir / ADAPTER_SAFETENSORS).is_file():
        if not (adapter_dir / ADAPTER_PICKLE).is_file():
            raise UserError(
                f"no {ADAPTER_SAFETENSORS}: the adapter weights are missing", path=adapter_path, field="peft_model_path"
            )
        if not allow_pickle:
            raise UserError(
                f"only a pickled {ADAPTER_PICKLE} (unpickling can run arbitrary code): pass "
                "--allow_pickle if you trust it, or re-save the adapter as safetensors",
                path=adapter_path,
                field="peft_model_path",
            )
    return adapter_dir


def _check_model_dir(model_path: str, allow_pickle: bool, *, from_adapter: bool) -> None:
    """Fail with one line before ``from_pretrained`` turns a missing or pickled model into a traceback."""
    field = "base_model_path"
    if not _looks_local(model_path):
        return  # a hub name: from_pretrained reports whether it can be had
    path = Path(model_path).expanduser()
    if not path.is_dir():
        if from_adapter:
            raise UserError(
                f"the adapter's base model '{model_path}' (base_model_name_or_path in {ADAPTER_CONFIG}) "
                "does not exist here: pass --base_model_path",
                field=field,
            )
        hint = "" if "/" in model_path else " (hub models are named owner/name)"
        raise UserError(f"no such model directory{hint}", path=model_path, field=field)
    if not (path / "config.json").is_file():
        raise UserError("no config.json: not a model directory", path=model_path, field=field)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and any(path.glob("*.bin")) and not allow_pickle:
        raise UserError(
            "only pickled *.bin weights (unpickling can run arbitrary code): pass --allow_pickle if you trust them",
            path=model_path,
            field=field,
        )


def resolve_paths(
    base_model_path: str | None, peft_model_path: str | None, allow_pickle: bool
) -> tuple[str, str | None]:
    """(base model, adapter directory or None), each checked to exist in a loadable form."""
    if peft_model_path is None and base_model_path is not None:
        base = Path(base_model_path)
        if (base / ADAPTER_CONFIG).is_file() and not (base / "config.json").is_file():
            logger.info("%s holds an adapter: loading it as --peft_model_path", base_model_path)
            base_model_path, peft_model_path = None, base_model_path
    if peft_model_path is None:
        assert base_model_path is not None
        _check_model_dir(base_model_path, allow_pickle, from_adapter=False)
        return base_model_path, None
    adapter_dir = _check_adapter_dir(peft_model_path, allow_pickle)
    from_adapter = base_model_path is None
    if from_adapter:
        base_model_path = _read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if not isinstance(base_model_path, str) or not base_model_path:
            raise UserError(f"{ADAPTER_CONFIG} names no base model: pass --base_model_path", path=peft_model_path)
    _check_model_dir(base_model_path, allow_pickle, from_adapter=from_adapter)
    return base_model_path, peft_model_path


def resolve_template(override: str | None, *model_dirs: str | None) -> tuple[PromptTemplate, str | None]:
    """The prompt template (and chat template name) training saved, the first found in ``model_dirs``."""
    for directory in model_dirs:
        if directory is None or not Path(directory).is_dir():
            continue
        name = load_template_name(directory)
        if name is None:
            continue
        saved = json.loads((Path(directory) / TEMPLATE_FILE).read_text(encoding="utf-8"))
        chat_template = saved.get("chat_template") if isinstance(saved, dict) else None
        if override is not None and override != name:
            logger.warning("prompting with --prompt_template %s, but the model was trained with '%s'", override, name)
        return get_template(override or name), chat_template
    if override is None:
        logger.warning(
            "no %s next to the model: prompting with the '%s' template (set --prompt_template)",
            TEMPLATE_FILE,
            DEFAULT_TEMPLATE,
        )
    return get_template(override or DEFAULT_TEMPLATE), None


def _model_arguments(base: str, tokenizer_name: str | None, trust_remote_code: bool, allow_pickle: bool) -> Any:
    from finetuning.arguments import ModelArguments

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

    from finetuning import modeling

    base, adapter = resolve_paths(args.base_model_path, args.peft_model_path, args.allow_pickle)
    template, chat_template = resolve_template(args.prompt_template, adapter, base)
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
        "loaded %s%s (%s, %s) on %s; prompt template '%s'",
        base,
        f" + adapter {adapter}" if adapter else "",
        config.model_type,
        str(dtype).removeprefix("torch."),
        device,
        template.name,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        template=template,
        chat_template=chat_template,
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
    output = Path(output_dir)
    if output.resolve() in {Path(loaded.base_path).resolve(), Path(loaded.adapter_path or "").resolve()}:
        raise UserError(
            "is the base or adapter directory: choose a new directory", path=output_dir, field="merge_and_save"
        )
    if any((output / name).exists() for name in ("config.json", ADAPTER_CONFIG)):
        raise UserError("already holds a model: choose a new directory", path=output_dir, field="merge_and_save")
    try:
        merged = loaded.model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError) as error:
        raise UserError(f"cannot merge the adapter: {error}".splitlines()[0], field="merge_and_save") from None
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output)  # safetensors: transformers 5 writes nothing else
    loaded.tokenizer.save_pretrained(output)
    save_template_name(output, loaded.template.name, loaded.chat_template)
    loaded.model = merged
    logger.info("merged model saved to %s", output)
    return output
