"""The defaults of every speed lever of ``--auto_optimize``, in one place.

Each field is one lever of :mod:`finetuning.model.acceleration`; flipping a default here changes what every
script and the benchmark's ``project`` variant run (bench/train_throughput.py switches each one off or on per
variant, e.g. ``project+noshared``, ``project+layercompile``). A lever is on by default only when the tests prove
it changes results by rounding alone and a measurement says it pays (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeedLevers:
    """Which of the project's own speed-ups ``optimize_for_training`` applies."""

    # LoRA update added inside the product, addmm(base, x·Aᵀ, Bᵀ, alpha=scaling) (finetuning/model/lora_fusion.py).
    fused_lora: bool = True
    # One down-projection x·[A_q; A_k; A_v]ᵀ (and [A_gate; A_up]) for the adapted layers that share an input.
    # Its gradients equal PEFT's (unit tests) and it memorizes as PEFT does (docs/testing.md), but it does not pay:
    # +0.2% on the 7B shape (inside the noise), -3% on the Xeon (docs/performance.md). Off.
    shared_lora_down: bool = False
    # The hand-written LoRA autograd Function (reuses the saved x·Aᵀ; no casts or transposes in backward; the
    # update added into the base output in place: +5% on the 7B shape). Taking x·Aᵀ into it as well, to write all
    # of dx in one buffer, measured -0.5 to -1% and was dropped (docs/performance.md).
    lora_function: bool = True
    # torch.compile each decoder layer (inductor) on CUDA / on the CPU. Off: on the 7B shape -1% and a 16 s first
    # step; on the Xeon +6% and a 98 s cold first step (docs/performance.md).
    compile_layers_cuda: bool = False
    compile_layers_cpu: bool = False
    # Liger kernels (CUDA) only for models at least this large: on a 7B model they make the plain path 1.21-1.27x
    # faster in 11.6 GiB less, and the project's path 2.6 GiB smaller at the same speed (within the noise); on the
    # 0.3B 4-layer model they bring nothing and their Triton kernels compile at the first step (2.25 s against
    # 0.55 s without them, cold; docs/performance.md).
    liger_min_parameters: int = 1_000_000_000
    # Cross-entropy over the vocabulary in chunks of tokens, never a float32 copy of all logits (no Liger).
    chunked_cross_entropy: bool = False
    # How packed rows attend on CUDA: "varlen" (FlashAttention's variable-length kernel, nothing compiled),
    # "flex" (FlexAttention, a block mask and a kernel compiled per row length) or "sdpa" (the per-sample mask).
    packed_attention: str = "varlen"
    # Packed rows padded to one of this many lengths (fractions of the block): few shapes for compiled kernels
    # (FlexAttention, --torch_compile); other runs pad to any multiple of 128.
    packed_length_buckets: int = 4


DEFAULT_LEVERS = SpeedLevers()
