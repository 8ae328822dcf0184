"""Loading tokenizers and models, on every device through one code path.

Loading goes through ``from_pretrained`` on a path or a name, never through ``torch.load`` of a pickle:
weights are read from safetensors unless the caller explicitly allows pickled ``.bin`` files.
``trust_remote_code`` is passed through as the user set it (off by default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetuning.errors import UserError

logger = logging.getLogger(__name__)


def local_model_directory(name: str, field: str) -> Path | None:
    """The folder a model argument names, or None for an ``owner/name`` hub id (``from_pretrained`` reports
    whether that can be had). Anything else is taken as a path, so a mistyped folder fails at once with its name,
    not after the hub client's retries (hub ids without an owner, like ``gpt2``, have ``owner/name`` forms)."""
    path = Path(name).expanduser()
    local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name
    if not local:
        return None
    if not path.is_dir():
        hint = "" if "/" in name else " (hub models are named owner/name)"
        raise UserError(f"no such model directory{hint}", path=name, field=field)
    return path


def _loading_error(what: str, name: str, error: Exception, field: str) -> UserError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"cannot load {what} '{name}': {message}", field=field)


def load_tokenizer(model_args: Any, *, padding_side: str = "right", special_tokens: list[str] | None = None) -> Any:
    """The tokenizer, with a pad token that is not EOS where the vocabulary allows it."""
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        raise UserError("pass --model_name_or_path or --tokenizer_name", field="model_name_or_path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name,
            use_fast=model_args.use_fast_tokenizer,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError, KeyError) as error:
        raise _loading_error("tokenizer", name, error, "tokenizer_name") from None
    if special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    if tokenizer.pad_token is None:
        # Prefer UNK: a pad distinct from EOS keeps batched generation unambiguous. Where there is no UNK,
        # pad == EOS is still safe for training because labels are padded by position, not by token id.
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def resolve_dtype(name: str | None, *, bf16: bool, fp16: bool, frozen_base: bool) -> Any:
    """Weights dtype: half precision for a frozen base under mixed precision, else float32 masters."""
    import torch

    if name == "auto":
        return "auto"
    if name is not None:
        return getattr(torch, name)
    if frozen_base and (bf16 or fp16):
        return torch.bfloat16 if bf16 else torch.float16
    return torch.float32


def load_config(model_args: Any) -> Any:
    from transformers import AutoConfig

    name = model_args.config_name or model_args.model_name_or_path
    if name is None:
        raise UserError(
            "pass --model_name_or_path (or --config_name to train from scratch)", field="model_name_or_path"
        )
    try:
        return AutoConfig.from_pretrained(
            name,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError, KeyError) as error:
        raise _loading_error("model config", name, error, "model_name_or_path") from None


def load_model(
    model_args: Any, model_class: Any, *, config: Any, dtype: Any, tokenizer: Any, seed: int | None = None
) -> Any:
    """The model in ``dtype``, its embeddings grown to the tokenizer's vocabulary if tokens were added.

    ``seed`` seeds every generator first: whatever is initialised from here on (a from-scratch model, new
    embedding rows, the adapter weights PEFT creates next) is then the same in every run and on every rank.
    The Trainer seeds only when it is built, which is too late for those.
    """
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    extra: dict[str, Any] = (
        {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    )
    allow_pickle = getattr(model_args, "allow_pickle_weights", False)
    if model_args.model_name_or_path is None:
        logger.info("training from scratch: no --model_name_or_path")
        model = model_class.from_config(config, trust_remote_code=model_args.trust_remote_code, dtype=dtype, **extra)
    else:
        if not allow_pickle:
            _refuse_pickle_only(model_args.model_name_or_path)
        try:
            model = model_class.from_pretrained(
                model_args.model_name_or_path,
                config=config,
                revision=model_args.model_revision,
                cache_dir=model_args.cache_dir,
                trust_remote_code=model_args.trust_remote_code,
                dtype=dtype,
                use_safetensors=None if allow_pickle else True,  # no pickled weights unless allowed
                **extra,
            )
        except (OSError, ValueError) as error:
            raise _loading_error("model", model_args.model_name_or_path, error, "model_name_or_path") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _refuse_pickle_only(name: str) -> None:
    """A local model directory with pickled weights (``*.bin``) and no safetensors: refuse it in one line."""
    from pathlib import Path

    directory = Path(name)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickled = sorted(path.name for path in directory.glob("*.bin") if path.name != "training_args.bin")
    if pickled:
        raise UserError(
            f"model '{name}' has only pickled weights ({', '.join(pickled)}), which can run code when loaded; "
            "convert them to safetensors, or pass --allow_pickle_weights if you trust their source",
            field="model_name_or_path",
        )


def added_token_ids(tokenizer: Any, special_tokens: list[str] | None) -> list[int]:
    """Ids of the ``--special_tokens`` that the vocabulary did not have: their embeddings must train."""
    if not special_tokens:
        return []
    base_vocabulary = tokenizer.vocab_size
    return sorted({tokenizer.convert_tokens_to_ids(token) for token in special_tokens} - set(range(base_vocabulary)))
