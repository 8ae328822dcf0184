"""FlexAttention compiled once per row length, for the few lengths packed rows are padded to.

transformers compiles ``flex_attention`` and ``create_block_mask`` with ``torch.compile``'s default automatic
dynamic shapes: the first row length gets a static kernel, the second a recompile into a dynamic-shape one
(forward and backward, each time the process starts). That was most of the minute a short packed CUDA run spent
before training (tests/model/test_flex_shapes.py shows the recompile on the second length). With packed rows
padded to a few lengths (:func:`finetuning.data.collator.length_buckets`), a static compile per length is
fewer and faster compiles and static kernels; the block mask is built by one compiled function per length too.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def compile_flex_attention_per_shape() -> bool:
    """Route transformers' FlexAttention and block-mask creation through static (per-shape) compiled functions;
    True once installed, False where this transformers release is laid out differently (left unchanged)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    try:
        from transformers import masking_utils
        from transformers.integrations import flex_attention as hf_flex
    except ImportError:
        return False
    if getattr(masking_utils.create_block_mask, "_static_per_shape", False):
        return True
    if not hasattr(hf_flex, "WrappedFlexAttention") or not hasattr(masking_utils, "create_block_mask"):
        logger.warning("FlexAttention left as transformers compiles it: its module layout changed")
        return False
    # one static kernel per (length, batch size, with or without gradients): room for the 4 lengths x 2 modes x a
    # shorter last batch, past dynamo's default of 8 entries, after which it would fall back to eager attention
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    compiled_attention = torch.compile(flex_attention, dynamic=False)
    compiled_mask = torch.compile(create_block_mask, dynamic=False)

    def block_mask(*args: Any, _compile: bool = False, **kwargs: Any) -> Any:
        return compiled_mask(*args, **kwargs)

    class StaticFlexAttention:
        """Stands in for transformers' singleton: the same compiled function for training and evaluation."""

        def __init__(self, training: bool) -> None:
            del training  # dynamo guards on requires_grad itself

        def __call__(self) -> Any:
            return compiled_attention

    block_mask._static_per_shape = True
    masking_utils.create_block_mask = block_mask
    hf_flex.WrappedFlexAttention = StaticFlexAttention
    return True
