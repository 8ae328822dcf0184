"""The flags that choose the model, how it is loaded, and the PEFT method trained on it.

Shared by training and inference (``inference.py`` loads through the same :class:`ModelArguments`), so they
live below both.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetuning.cli import flag

PEFT_METHODS = ("lora", "ptun", "prefix", "prompt", "llama_adapter", "ia3", "none")
TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from, and how to load them."""

    model_name_or_path: str | None = flag(None, "Model directory (or hub name, where a hub is reachable) to fine-tune.")
    config_name: str | None = flag(None, "Config to use instead of the model's own (path or name).")
    tokenizer_name: str | None = flag(None, "Tokenizer to use instead of the model's own (path or name).")
    cache_dir: str | None = flag(None, "Where downloaded models and the tokenized-data cache are stored.")
    model_revision: str = flag("main", "Model version to use: a branch name, tag name or commit id.")
    use_fast_tokenizer: bool = flag(True, "Use the Rust ('fast') tokenizer where the model has one.")
    trust_remote_code: bool = flag(
        False, "Run Python code shipped inside the model directory. Off by default: only for models you trust."
    )
    allow_pickle_weights: bool = flag(
        False,
        "Load a model that has only pickled weights (pytorch_model.bin). Off by default: unpickling can "
        "run code, so only safetensors weights are loaded unless you trust the model's source.",
    )
    torch_dtype: str | None = flag(
        None,
        "Dtype to load the model weights in. Default: bfloat16 for a frozen base under --bf16 with a "
        "PEFT method (halves memory, adapters stay float32), else float32.",
        choices=TORCH_DTYPES,
    )
    attn_implementation: str | None = flag(
        None, "Attention kernel: 'sdpa', 'eager', 'flash_attention_2', ... (default: transformers' choice)."
    )


@dataclass
class Seq2SeqPeftArguments:
    """Which parameter-efficient method to train, and its sizes (encoder-decoder models: no LLaMA-Adapter)."""

    peft: str = flag(
        "lora",
        "lora, ptun (P-tuning), prefix, prompt (prompt tuning), ia3, or none (full fine-tuning).",
        choices=tuple(method for method in PEFT_METHODS if method != "llama_adapter"),
    )
    lora_rank: int = flag(8, "LoRA rank r.")
    lora_alpha: int = flag(16, "LoRA scaling numerator (the update is scaled by alpha/r).")
    lora_dropout: float = flag(
        0.0,
        "Dropout on the LoRA input. 0 (PEFT's default) draws no mask per adapted layer: 1.09x faster "
        "and 16.6 GiB less on a 7B GPU run, 3.6x faster on CPUs (docs/performance.md). The old scripts used 0.05.",
    )
    lora_target_modules: list[str] | None = flag(
        None, "Module names to adapt (default: PEFT's choice for the architecture)."
    )
    lora_all_linear: bool = flag(False, "Adapt every linear layer except the output head.")
    num_virtual_tokens: int = flag(10, "Virtual tokens for P-tuning, prefix tuning and prompt tuning.")
    ptun_hidden_size: int = flag(1024, "Hidden size of the P-tuning prompt encoder.")


@dataclass
class PeftArguments(Seq2SeqPeftArguments):
    """Which parameter-efficient method to train, and its sizes."""

    peft: str = flag(
        "lora",
        "lora, ptun (P-tuning), prefix, prompt (prompt tuning), llama_adapter, ia3, or none (full fine-tuning).",
        choices=PEFT_METHODS,
    )
    adapter_layers: int = flag(30, "LLaMA-Adapter: how many top layers get adaption prompts (capped at the depth).")
    adapter_len: int = flag(10, "LLaMA-Adapter: adaption prompt length.")
