"""Speed-ups that change no result beyond rounding, switched on by default (``--auto_optimize``).

Users should get a fast run without knowing the switches, and every switch here is safe to leave on:

* LoRA inputs stay in the autocast dtype. PEFT casts each adapted layer's input to the adapter's float32
  before the adapter's matmul, which autocast immediately casts back to bf16: a full-size float32 copy of
  the activation per adapted layer (memory traffic, and memory kept for backward) that changes nothing.
* Data-parallel runs skip DDP's unused-parameter search: every trainable parameter is used in every step.
* On CUDA, Liger kernels where installed and the architecture is covered: fused RMSNorm, RoPE and SwiGLU,
  and a fused linear + cross-entropy that never materializes the full-vocabulary float32 logits.

Each is measured, with the levers that did not pay, in docs/performance.md (bench/train_throughput.py).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

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


def liger_supports(model_type: str) -> bool:
    """Whether liger-kernel is installed and has kernels for this architecture."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def optimize_for_training(model: Any, training_args: Any, *, enabled: bool) -> list[str]:
    """Apply the safe speed-ups for this device; returns their names (for the log). Call before the Trainer
    is built: it reads ``use_liger_kernel`` when constructed."""
    if not enabled:
        return []
    applied = []
    if (training_args.bf16 or training_args.fp16) and keep_lora_inputs_in_compute_dtype(model):
        applied.append("LoRA inputs kept in the autocast dtype")
    if training_args.ddp_find_unused_parameters is None and training_args.world_size > 1:
        # Every trainable parameter takes part in every step here (adapters or the whole causal LM), so DDP's
        # per-step search of the autograd graph for unused ones is pure overhead.
        training_args.ddp_find_unused_parameters = False
        applied.append("DDP without the unused-parameter search")
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if _uses_cuda(training_args) and not training_args.use_liger_kernel and liger_supports(model_type):
        training_args.use_liger_kernel = True
        applied.append("Liger kernels")
    if applied:
        logger.info("speed-ups (--auto_optimize): %s", ", ".join(applied))
    return applied


def _uses_cuda(training_args: Any) -> bool:
    import torch

    return not training_args.use_cpu and torch.cuda.is_available()
