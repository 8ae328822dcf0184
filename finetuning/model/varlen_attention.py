"""Packed blocks attended through FlashAttention's variable-length kernel: no mask, no compilation.

A packed row holds several samples whose position ids restart at 0. FlexAttention keeps them apart with a
block mask and a kernel compiled per row length (tens of seconds before the first step of every run);
SDPA with the per-sample mask runs a dense masked kernel over the whole row. PyTorch's own
``torch.nn.attention.varlen.varlen_attn`` (FlashAttention 2, CUDA, sm80+) takes the samples as one flat
sequence with cumulative lengths instead: every sample attends causally to itself and to nothing else, and
nothing is compiled. The lengths come from the position ids, once per forward.

Anything the kernel does not cover (a padding mask, a KV cache during generation, float32 inputs, attention
dropout, a sliding window shorter than the row, the CPU) goes to the model's SDPA path unchanged, so the model
stays correct for evaluation and generation after training.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from typing import Any

logger = logging.getLogger(__name__)

ATTENTION_NAME = "packed_varlen"

_last_boundaries: tuple[Any, tuple[Any, int]] | None = None


def sample_boundaries(position_ids: Any) -> tuple[Any, int]:
    """Cumulative sample lengths over the flattened rows (int32, starting at 0) and the longest sample.

    A sample starts wherever the position does not follow the previous one by 1, and at every row start (the
    same rule transformers uses to find packed samples), so a row's padding tail is a sample of its own.
    """
    import torch

    rows, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first = starts.flatten().nonzero().flatten()
    ends = torch.cat([first, first.new_tensor([rows * length])])
    return ends.to(torch.int32), int((ends[1:] - ends[:-1]).max())


def _boundaries_once_per_forward(position_ids: Any) -> tuple[Any, int]:
    """Every layer of one forward gets the same position-id tensor: work out its boundaries (a device-to-host
    sync) once. Keyed on the tensor object itself, never on its address, which the allocator reuses."""
    global _last_boundaries
    if _last_boundaries is not None and _last_boundaries[0]() is position_ids:
        return _last_boundaries[1]
    boundaries = sample_boundaries(position_ids)
    _last_boundaries = (weakref.ref(position_ids), boundaries)
    return boundaries


@functools.cache
def _kernel_parameters() -> frozenset[str]:
    """The keyword parameters of this torch release's ``varlen_attn`` (empty where it has none): how it is told
    "causal" and whether it takes ``enable_gqa`` changed between releases."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def flash_varlen(query: Any, key: Any, value: Any, boundaries: Any, longest: int, scale: float | None) -> Any:
    """The kernel: (tokens, heads, dim) query, key and value; key and value may have fewer heads (GQA)."""
    from torch.nn.attention.varlen import varlen_attn

    parameters = _kernel_parameters()
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "enable_gqa" in parameters and key.shape[1] != query.shape[1]:
        options["enable_gqa"] = True
    return varlen_attn(query, key, value, boundaries, boundaries, longest, longest, scale=scale, **options)


def kernel_supports(query: Any) -> bool:
    """FlashAttention runs half precision on CUDA only (fp32 and CPU tensors take the SDPA path)."""
    import torch

    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)


def _covered(module: Any, query: Any, key: Any, attention_mask: Any, dropout: float, kwargs: dict) -> bool:
    import torch

    position_ids = kwargs.get("position_ids")
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    return (
        attention_mask is None
        and isinstance(position_ids, torch.Tensor)
        and position_ids.shape == (query.shape[0], query.shape[2])
        and query.shape[2] == key.shape[2]
        and kernel_supports(query)
        and getattr(module, "is_causal", True)
        and not (dropout and module.training)
        and (window is None or window >= query.shape[2])
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
    )


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function interface: (batch, heads, length, dim) in, (batch, length, heads, dim)
    out, as ``sdpa_attention_forward`` returns it."""
    from transformers import AttentionInterface

    if not _covered(module, query, key, attention_mask, dropout, kwargs):
        sdpa = AttentionInterface._global_mapping["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rows, heads, length, dim = query.shape
    boundaries, longest = _boundaries_once_per_forward(kwargs["position_ids"])

    def flat(tensor: Any) -> Any:
        return tensor.transpose(1, 2).reshape(rows * length, tensor.shape[1], dim)

    output = flash_varlen(flat(query), flat(key), flat(value), boundaries, longest, scaling)
    return output.view(rows, length, heads, dim), None


def _mask_only_for_padding(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for packed or plain causal rows (the kernel needs none); SDPA's mask where padding needs one."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def varlen_available() -> bool:
    """A CUDA device FlashAttention 2 runs on (sm80+) and a torch with ``varlen_attn``."""
    import torch

    causal = {"window_size", "is_causal"} & _kernel_parameters()
    return bool(causal) and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def use_varlen_attention(model: Any) -> bool:
    """Switch an SDPA model to the variable-length kernel for packed rows; False (unchanged) where the
    architecture takes no attention function of ours or this torch has no such kernel."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != "sdpa" or not varlen_available():
        return False
    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _mask_only_for_padding)
    try:
        base.set_attn_implementation(ATTENTION_NAME)
    except (ValueError, ImportError) as error:
        logger.info("variable-length attention not used: %s", error)
        return False
    return base.config._attn_implementation == ATTENTION_NAME
