"""Kernel choices for training: speed-ups that change no result beyond rounding, on by default
(``--auto_optimize``), and one guard that is always on.

Guard: on CUDA, attention that carries a mask (padded batches, packed blocks under SDPA) never runs cuDNN's
SDPA kernel, whose backward returns NaN gradients where a row's scores are all very negative and the length
is 64 past a multiple of 128 (pytorch/pytorch#196678, torch 2.11 to 2.13 on H100/H200; seen in DPO runs of
Qwen2.5). Unmasked attention keeps cuDNN; masked attention runs the memory-efficient kernel instead, 23%
slower on packed 7B data, which FlexAttention makes moot for packed runs (docs/performance.md).

Users should get a fast run without knowing the switches, and every switch here is safe to leave on:

* LoRA layers run the project's own forward and backward (finetuning/model/lora_fusion.py): the update added
  inside the matrix product, one down-projection for the layers that share an input (q, k, v; gate, up), and a
  hand-written backward that reuses the saved ``x·Aᵀ``.
* On CUDA, packed blocks attend through FlashAttention's variable-length kernel (each sample one sequence of
  a flat batch, nothing compiled; finetuning/model/varlen_attention.py), or FlexAttention where that kernel is
  missing: both skip what one sample would see of another, where SDPA runs a dense masked kernel over the block.
* LoRA inputs stay in the autocast dtype. PEFT casts each adapted layer's input to the adapter's float32
  before the adapter's matmul, which autocast immediately casts back to bf16: a full-size float32 copy of
  the activation per adapted layer (memory traffic, and memory kept for backward) that changes nothing.
* Data-parallel runs skip DDP's unused-parameter search: every trainable parameter is used in every step.
* On CUDA, Liger kernels where installed, the architecture is covered and the model is large enough to gain
  (``liger_min_parameters``): fused RMSNorm, RoPE and SwiGLU, and a fused linear + cross-entropy that never
  materializes the full-vocabulary float32 logits.

Each is measured, with the levers that did not pay, in docs/performance.md (bench/train_throughput.py). Which
of the project's own levers run, and which are off until measured (per-layer ``torch.compile``, chunked
cross-entropy), is set in one place: finetuning/model/levers.py.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from finetuning.data.collator import length_buckets
from finetuning.model.chunked_loss import chunk_cross_entropy
from finetuning.model.flex_shapes import compile_flex_attention_per_shape
from finetuning.model.levers import DEFAULT_LEVERS, SpeedLevers
from finetuning.model.lora_fusion import fuse_lora_updates
from finetuning.model.peft_setup import count_parameters
from finetuning.model.varlen_attention import use_varlen_attention

__all__ = ["fuse_lora_updates", "optimize_for_training", "packed_row_lengths"]

logger = logging.getLogger(__name__)


def _follow_autocast(module: Any, args: tuple[Any, ...]) -> None:
    import torch

    inputs = args[0] if args else None
    if isinstance(inputs, torch.Tensor):
        module.cast_input_dtype_enabled = not torch.is_autocast_enabled(inputs.device.type)


def keep_lora_inputs_in_compute_dtype(model: Any) -> int:
    """Skip PEFT's float32 cast of LoRA inputs whenever autocast is on; returns how many layers follow that rule.

    Decided per call: under autocast the adapter's float32 weights are cast to the compute dtype for the matmul
    anyway, exactly as the input would have been; without it (``nn.DataParallel`` replicas run in threads that
    do not inherit autocast, a pure-bf16 run) PEFT's cast is needed and stays.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.register_forward_pre_hook(_follow_autocast)
            switched += 1
    return switched


def avoid_cudnn_attention_with_masks() -> bool:
    """Route masked SDPA calls around cuDNN (see the module's docstring); True once installed."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not torch.cuda.is_available():
        return False
    current = AttentionInterface._global_mapping["sdpa"]
    if getattr(current, "_avoids_cudnn_with_masks", False):
        return True
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def sdpa_without_cudnn_under_masks(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        if attention_mask is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        with sdpa_kernel(backends):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    sdpa_without_cudnn_under_masks._avoids_cudnn_with_masks = True
    AttentionInterface.register("sdpa", sdpa_without_cudnn_under_masks)
    return True


def use_flex_attention(model: Any) -> bool:
    """Switch an SDPA model to FlexAttention; False (and unchanged) where the architecture has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != "sdpa":
        return False  # eager-only architectures, or the user's own choice
    try:
        base.set_attn_implementation("flex_attention")
    except (ValueError, ImportError):
        return False
    return base.config._attn_implementation == "flex_attention"  # some models only warn that they cannot


def liger_supports(model_type: str) -> bool:
    """Whether liger-kernel is installed and has kernels for this architecture."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def optimize_for_training(
    model: Any, training_args: Any, *, enabled: bool, packed: bool = False, levers: SpeedLevers = DEFAULT_LEVERS
) -> list[str]:
    """Apply the safe speed-ups for this device; returns their names (for the log). Call before the Trainer
    is built: it reads ``use_liger_kernel`` when constructed. The attention guard is applied whatever
    ``enabled`` says; ``levers`` (finetuning/model/levers.py) says which of the project's own ones run."""
    if not training_args.use_cpu:
        avoid_cudnn_attention_with_masks()
    if not enabled:
        return []
    applied = []
    cuda = _uses_cuda(training_args)
    if levers.fused_lora and fuse_lora_updates(
        model, shared_down=levers.shared_lora_down, function=levers.lora_function
    ):
        applied.append("LoRA updates fused into one matrix product")
    if packed and cuda:
        applied += packed_attention(model, levers)
    if (training_args.bf16 or training_args.fp16) and keep_lora_inputs_in_compute_dtype(model):
        applied.append("LoRA inputs kept in the autocast dtype")
    if training_args.ddp_find_unused_parameters is None and training_args.world_size > 1:
        # Every trainable parameter takes part in every step here (adapters or the whole causal LM), so DDP's
        # per-step search of the autograd graph for unused ones is pure overhead.
        training_args.ddp_find_unused_parameters = False
        applied.append("DDP without the unused-parameter search")
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if (
        cuda
        and not training_args.use_liger_kernel
        and liger_supports(model_type)
        and count_parameters(model)[1] >= levers.liger_min_parameters
    ):
        training_args.use_liger_kernel = True
        applied.append("Liger kernels")
    if levers.chunked_cross_entropy and not training_args.use_liger_kernel and chunk_cross_entropy(model):
        applied.append("chunked cross-entropy")
    compile_layers = levers.compile_layers_cuda if cuda else levers.compile_layers_cpu
    if compile_layers and not training_args.torch_compile and compile_decoder_layers(model):
        applied.append("torch.compile per decoder layer")
    if applied:
        logger.info("speed-ups (--auto_optimize): %s", ", ".join(applied))
    return applied


def packed_attention(model: Any, levers: SpeedLevers) -> list[str]:
    """The kernel packed blocks attend through on CUDA (the lever's choice, else the next one that exists)."""
    if levers.packed_attention == "varlen" and use_varlen_attention(model):
        return ["FlashAttention variable-length kernel over packed blocks"]
    if levers.packed_attention in ("varlen", "flex") and use_flex_attention(model):
        if levers.packed_length_buckets and compile_flex_attention_per_shape():
            return ["FlexAttention over packed blocks, compiled once per row length"]
        return ["FlexAttention over packed blocks"]
    return []


def packed_row_lengths(
    training_args: Any, block: int | None, model: Any, levers: SpeedLevers = DEFAULT_LEVERS
) -> tuple[int, ...] | None:
    """The lengths the collator pads packed rows to where kernels are compiled per shape (FlexAttention,
    ``--torch_compile``); None (any multiple of 128, the least padding) elsewhere or with ``--auto_optimize False``.
    Call after :func:`optimize_for_training`, which picks the attention."""
    config = getattr(model, "config", None)
    compiled = training_args.torch_compile or getattr(config, "_attn_implementation", None) == "flex_attention"
    if not block or not training_args.auto_optimize or not levers.packed_length_buckets or not compiled:
        return None
    return length_buckets(block, levers.packed_length_buckets)


def compile_decoder_layers(model: Any) -> int:
    """``torch.compile`` each decoder layer in place (one graph per layer class, reused by every layer of it);
    returns how many were compiled. Embeddings, the output layer and the loss stay eager."""
    layers = [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile()
    if layers and hasattr(model.config, "use_cache"):
        # A KV cache in a training forward (models make one unless told not to) guards each compiled layer on its
        # own cache slot: a recompile per layer, past dynamo's limit of 8. Without it: 2 graphs for 12 layers.
        model.config.use_cache = False
    return len(layers)


def _uses_cuda(training_args: Any) -> bool:
    import torch

    return not training_args.use_cpu and torch.cuda.is_available()
